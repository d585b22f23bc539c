"""A training run's checkpoint: where the run stands (Position, Best), what its checkpoint holds
(`contents`), what a resume checks (`check_resume`) and restores (`restore`).

A run's position is (epoch, batch): `epoch` epochs are complete and `batch` batches of the next
one are done. A checkpoint holds the position, the data generator's state at the start of that
epoch and the epoch's meters, so a run resumed from any batch continues exactly as the
uninterrupted run would have.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import torch

from .averaging import Averaged, WeightAverage
from .cli import flag
from .errors import UserError
from .compat import CHECKPOINT_FORMAT
from .meters import Meters
from .run.build import RunParts, check_structure
from .run.storage import load_state

if TYPE_CHECKING:
    from .config import Config

MID_EPOCH_FIXED = ("dataset", "batch_size", "train_samples", "shift")  # define an epoch's batches
SCHEDULE = ("lr", "lr_decay", "lr_decay_steps")


@dataclass
class Position:
    epoch: int = 0  # epochs complete
    batch: int = 0  # batches of the next epoch done
    step: int = 0  # optimizer steps taken

    def where(self, batches: int) -> str:
        """The position in words, in an epoch of `batches` batches."""
        if self.batch == 0:
            return f"end of epoch {self.epoch}"
        if self.batch == batches:
            return f"epoch {self.epoch + 1} before its test pass"
        return f"epoch {self.epoch + 1} after batch {self.batch} of {batches}"


@dataclass
class Best:
    """The selected epoch, best.pt's."""
    accuracy: float = -1.0  # its selection accuracy (validation, else test)
    epoch: int = 0
    test_accuracy: float = -1.0


def contents(parts: RunParts, position: Position, best: Best, average: WeightAverage,
             meters: list[dict], epoch_rng: torch.Tensor,
             commands: list[str] | None) -> dict[str, Any]:
    """A checkpoint of the run. Its "model" is the weights tested: their average once it has
    begun ("averaged": its epochs; "trained_model": the weights trained on). `meters`: each
    process's share of the epoch."""
    trained = parts.model.state_dict()
    weights = ({"model": average.state, "averaged": tuple(average.epochs),
                "trained_model": trained} if average.epochs else {"model": trained})
    return {
        "format": CHECKPOINT_FORMAT, **weights, "model_args": parts.model_args,
        "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
        "epoch": position.epoch, "batch": position.batch, "step": position.step,
        "best_accuracy": best.accuracy, "best_epoch": best.epoch,
        "best_test_accuracy": best.test_accuracy, "meters": meters,
        "processes": parts.world.size, "config": dataclasses.asdict(parts.cfg),
        "classes": list(parts.classes), "torch_rng": torch.get_rng_state(),
        "data_rng": epoch_rng, "commands": commands,
        **({"cuda_rng": torch.cuda.get_rng_state(parts.device)}  # dropout's, on a GPU
           if parts.device.type == "cuda" else {}),
    }


def check_resume(checkpoint: dict, cfg: Config, processes: int) -> None:
    """Refuse, in one line, settings a resumed run cannot take."""
    saved, epoch = checkpoint["config"], checkpoint["epoch"]
    if epoch >= cfg.epochs:
        raise UserError(f"the checkpoint has finished {epoch} of --epochs {cfg.epochs}; pass "
                        "a larger --epochs to train further")
    if saved.get("validation_samples", 0) != cfg.validation_samples:
        raise UserError(f"--validation-samples {cfg.validation_samples} cannot apply to a "
                        "resumed run: its held-out split is "
                        f"{saved.get('validation_samples', 0)} images")
    target = cfg.stop_at_accuracy
    if target and checkpoint["best_accuracy"] >= target:
        raise UserError(f"the run already reached --stop-at-accuracy {target:g} (its best "
                        f"accuracy is {checkpoint['best_accuracy']:.2f}%); pass a higher one, "
                        "or 0, to train further")
    if saved.get("seed") != cfg.seed:
        raise UserError(f"--seed {cfg.seed} cannot apply to a resumed run: its random state "
                        f"comes from the checkpoint (seed {saved.get('seed')})")
    if checkpoint["batch"]:
        check_mid_epoch(checkpoint, cfg, processes)
    check_average(checkpoint, cfg)


def check_mid_epoch(checkpoint: dict, cfg: Config, processes: int) -> None:
    """A checkpoint from inside an epoch resumes only with the batches it was cut from."""
    saved, inside = checkpoint["config"], f"inside epoch {checkpoint['epoch'] + 1}"
    for name in MID_EPOCH_FIXED:
        if saved.get(name) != getattr(cfg, name):
            raise UserError(f"the checkpoint stopped {inside}, whose batches depend on "
                            f"{flag(name)} {saved.get(name)}; keep it to finish the epoch, or "
                            "resume from a checkpoint of an epoch's end")
    if checkpoint["processes"] != processes:
        raise UserError(f"the checkpoint stopped {inside} of a run of "
                        f"{checkpoint['processes']} processes; resume it with as many, or from "
                        "a checkpoint of an epoch's end")


def check_average(checkpoint: dict, cfg: Config) -> None:
    """An average goes on from the epoch it began with; one cannot begin at an epoch whose
    weights the checkpoint no longer has."""
    averaged, epoch, first = Averaged.of(checkpoint), checkpoint["epoch"], cfg.average_from
    if averaged is not None and first != averaged.first:
        raise UserError(f"--average-from {first} cannot apply to a resumed run whose checkpoint "
                        f"holds {averaged.describe()}: keep --average-from {averaged.first}")
    if averaged is None and first and first <= epoch:
        lost = f"epoch {epoch}" if first == epoch else f"epochs {first}-{epoch}"
        raise UserError(f"--average-from {first} cannot apply to a run resumed after epoch "
                        f"{epoch} without an average: the weights after {lost} were not kept; "
                        f"use --average-from {epoch + 1} or later")


def restore(checkpoint: dict, parts: RunParts, average: WeightAverage, meters: Meters
            ) -> tuple[Position, Best]:
    """Load a checked checkpoint into the run's parts (the model, its average, the optimiser,
    the schedule, the random states and, inside an epoch, this process's meters)."""
    check_structure(checkpoint["model_args"], parts.model_args, parts.cfg.model)
    load_state(parts.model, checkpoint["model"], "model")
    averaged = Averaged.of(checkpoint)
    if averaged is not None:  # the model loaded above is the average; the trained weights next
        average.restore(checkpoint["model"], averaged)
        load_state(parts.model, checkpoint.get("trained_model"), "trained weights")
    load_state(parts.optimizer, checkpoint["optimizer"], "optimizer state")
    load_state(parts.scheduler, checkpoint["scheduler"], "learning-rate schedule")
    try:
        torch.set_rng_state(checkpoint["torch_rng"])
        if parts.device.type == "cuda" and "cuda_rng" in checkpoint:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], parts.device)
        parts.generator.set_state(checkpoint["data_rng"])
        if checkpoint["batch"]:
            meters.load_state_dict(checkpoint["meters"][parts.world.rank])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as error:
        raise UserError(f"the checkpoint's random or meter state is damaged ({error})") from None
    position = Position(checkpoint["epoch"], checkpoint["batch"], checkpoint["step"])
    best = Best(checkpoint["best_accuracy"], checkpoint.get("best_epoch", 0),
                checkpoint.get("best_test_accuracy", checkpoint["best_accuracy"]))
    return position, best


def micro_batch_note(saved: dict, cfg: Config) -> str | None:
    """--micro-batch given on resume: the same steps, computed in other parts, in words."""
    before = saved.get("micro_batch", 0)
    if before == cfg.micro_batch:
        return None
    words = {0: "0 (automatic)"}
    return (f"--micro-batch {words.get(cfg.micro_batch, cfg.micro_batch)} where the run had "
            f"{words.get(before, before)}: the same steps, computed in other parts")


def apply_schedule(saved: dict, parts: RunParts, step: int) -> str | None:
    """Flags --lr, --lr-decay and --lr-decay-steps given on resume: the rate becomes what the
    new schedule gives at `step`, and decays by it from there. Returns what changed, in words."""
    cfg, optimizer, scheduler = parts.cfg, parts.optimizer, parts.scheduler
    changed = [name for name in SCHEDULE if saved.get(name) != getattr(cfg, name)]
    if not changed:
        return None
    gamma = cfg.lr_decay ** (1.0 / cfg.lr_decay_steps)
    lr = cfg.lr * gamma ** step
    scheduler.gamma = gamma
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = cfg.lr, lr
    scheduler._last_lr = [lr for _ in optimizer.param_groups]
    given = " ".join(f"{flag(name)} {getattr(cfg, name)}" for name in changed)
    return f"{given} in effect from step {step} (learning rate now {lr:.3g})"
