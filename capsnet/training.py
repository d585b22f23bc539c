"""Training and evaluation loops on torchnet's Engine, driven by small named hooks."""
from __future__ import annotations

import dataclasses
import functools
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torchnet.engine import Engine
from tqdm import tqdm

from . import interrupt
from .checkpoint import load_state, save_checkpoint
from .data import Batches, Split, load_split
from .errors import UserError
from .hooks import subscribe
from .loss import CapsuleLoss, LossParts
from .meters import Meters
from .model import CapsNet, CapsNetOutput
from .rundir import RunDir
from .storage import WriteError

class Step(NamedTuple):
    """What one forward pass hands to the on_forward hooks."""
    output: CapsNetOutput
    parts: LossParts


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_args(cfg: Any, split: Split) -> dict[str, Any]:
    """CapsNet arguments: shapes from the dataset, routing from the config."""
    _, channels, size, _ = split.images.shape
    return {"in_channels": channels, "image_size": size, "num_classes": len(split.classes),
            "routing_iterations": cfg.routing_iterations, "detach_routing": cfg.detach_routing,
            "digit_bias": cfg.digit_bias}


STRUCTURE = ("in_channels", "image_size", "num_classes", "digit_bias")


def check_structure(saved: dict[str, Any], now: dict[str, Any]) -> None:
    """A checkpoint's weights fit a model only if these arguments agree."""
    differ = [k for k in STRUCTURE if saved.get(k) != now[k]]
    if differ:
        raise UserError("the checkpoint does not fit this dataset and config ("
                        + ", ".join(f"{k}: saved {saved.get(k)}, now {now[k]}" for k in differ) + ")")


def make_optimizer(model: CapsNet, cfg: Any) -> tuple[torch.optim.Adam,
                                                     torch.optim.lr_scheduler.ExponentialLR]:
    """Adam with the rate decayed by lr_decay every lr_decay_steps, continuously (step per batch)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)  # one pass per step
    scheduler = torch.optim.lr_scheduler.ExponentialLR(
        optimizer, gamma=cfg.lr_decay ** (1.0 / cfg.lr_decay_steps))
    return optimizer, scheduler


def make_criterion(cfg: Any) -> CapsuleLoss:
    return CapsuleLoss(cfg.m_plus, cfg.m_minus, cfg.lambda_absent, cfg.reconstruction_weight)


Autocast = Callable[[], torch.autocast]


def configure_precision(precision: str, device: torch.device) -> Autocast:
    """Set the float32 matmul mode; return the autocast context for forward passes."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = device.type == "cuda"
    return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                             enabled=precision == "bf16")


def compile_model(model: CapsNet, enabled: bool) -> Callable[..., CapsNetOutput]:
    """torch.compile the model when asked; where compiling fails, run eager with a warning."""
    if not enabled:
        return model
    try:
        import torch._dynamo
        torch._dynamo.config.suppress_errors = True  # fall back to eager on compile errors
        # capsnet.spectral's lru_cache'd DFT matrices are pure functions of sizes: tracing
        # through the cache is correct, so Dynamo's warning about it is noise here.
        warnings.filterwarnings("ignore", message=".*functools.lru_cache.*wrapped function")
        return torch.compile(model)
    except Exception as error:  # torch.compile is missing or refuses this platform
        print(f"warning: --compile unavailable ({error}); running eager", file=sys.stderr)
        return model


def forward_step(network: Callable[..., CapsNetOutput], criterion: CapsuleLoss, autocast: Autocast,
                 train: bool) -> Callable[[tuple], tuple[Tensor, Step]]:
    """The Engine's network function: the decoder is masked by the labels in training only."""
    def step(sample: tuple[Tensor, Tensor]) -> tuple[Tensor, Step]:
        images, labels = sample
        with autocast():
            output = network(images, labels if train else None)
            parts = criterion.parts(images, labels, output)
        return parts.total, Step(output, parts)
    return step


def add_to_meters(meters: Meters, state: dict) -> None:
    _, labels = state["sample"]
    step: Step = state["output"]
    meters.add(step.output.lengths, labels, step.parts.margin, step.parts.reconstruction)


class Evaluator:
    """One pass over a test split through its own Engine (Engine.test), without gradients."""

    def __init__(self, model: CapsNet, criterion: CapsuleLoss, batches: Batches,
                 autocast: Autocast, network: Callable[..., CapsNetOutput] | None = None) -> None:
        self.model, self.batches = model, batches
        self.step = forward_step(network or model, criterion, autocast, train=False)
        self.meters = Meters(len(batches.split.classes))
        self.engine = Engine()
        subscribe(self.engine, "on_sample", interrupt.check)
        subscribe(self.engine, "on_forward", lambda state: add_to_meters(self.meters, state))

    def run(self) -> dict[str, float]:
        self.model.eval()
        self.meters.reset()
        bar = tqdm(self.batches, desc="test", unit="batch", leave=False, dynamic_ncols=True)
        try:
            with torch.inference_mode():
                self.engine.test(self.step, bar)
        finally:
            bar.close()
        return self.meters.summary()


class Diverged(UserError):
    """The loss became non-finite: training stops without saving the damaged weights."""


MID_EPOCH_FIXED = ("dataset", "batch_size", "train_samples", "shift")  # define an epoch's batches
SCHEDULE = ("lr", "lr_decay", "lr_decay_steps")


class Trainer:
    """Model, optimiser, data and run directory of one training run, on torchnet's Engine.

    The run's position is (epoch, batch): `epoch` epochs are complete and `batch` batches of the
    next one are done. A checkpoint holds the position, the data generator's state at the start
    of that epoch and the epoch's meters, so a run resumed from any batch continues exactly as
    the uninterrupted run would have.
    """

    def __init__(self, cfg: Any, run: RunDir, checkpoint: dict | None = None,
                 source: Path | None = None, allow_other_dataset: bool = False) -> None:
        self.cfg, self.run = cfg, run
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        train = load_split(cfg.dataset, cfg.data_dir, True, cfg.download, cfg.train_samples)
        test = load_split(cfg.dataset, cfg.data_dir, False, cfg.download, cfg.test_samples)
        self.classes = train.classes
        self.model_args = model_args(cfg, train)
        self.model = CapsNet(**self.model_args).to(self.device)
        self.network = compile_model(self.model, cfg.compile)
        self.autocast = configure_precision(cfg.precision, self.device)
        self.criterion = make_criterion(cfg)
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg)
        self.train_batches = Batches(train.to(self.device), cfg.batch_size, shuffle=True,
                                     shift=cfg.shift, generator=self.generator)
        self.evaluator = Evaluator(self.model, self.criterion,
                                   Batches(test.to(self.device), cfg.batch_size), self.autocast,
                                   self.network)
        self.meters = Meters(len(self.classes))
        self.epoch, self.batch, self.step, self.best_accuracy = 0, 0, 0, -1.0
        self.epoch_rng = self.generator.get_state()  # the data generator at the epoch's start
        self.good: tuple[Path, str] | None = None  # the newest checkpoint known to be good
        self.notes: list[str] = []  # what a resume changed, for the run's first line
        if checkpoint is not None:
            check_dataset(checkpoint, cfg, self.classes, allow_other_dataset)
            self.restore(checkpoint, source or run.last)
        self.bar: tqdm | None = None
        self.engine = Engine()
        for event, hook in (("on_start", self.on_start), ("on_start_epoch", self.on_start_epoch),
                            ("on_sample", interrupt.check), ("on_forward", self.on_forward),
                            ("on_update", self.on_update), ("on_end_epoch", self.on_end_epoch)):
            subscribe(self.engine, event, hook)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def fit(self) -> None:
        """Train up to cfg.epochs. Ctrl-C or SIGTERM stops after the current batch, saves
        last.pt and re-raises KeyboardInterrupt. A failed write or a divergence raises a
        UserError that names the newest good checkpoint."""
        step = forward_step(self.network, self.criterion, self.autocast, train=True)
        try:
            with interrupt.deferred():
                try:
                    self.engine.train(step, self.train_batches, self.cfg.epochs, self.optimizer)
                except KeyboardInterrupt:
                    self.close_bar()
                    self.save(self.run.last)
                    raise
        except (WriteError, Diverged) as error:
            self.close_bar()
            raise type(error)(f"{error}; {self.resume_hint()}") from None

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def where(self) -> str:
        """The run's position in words."""
        if self.batch == 0:
            return f"end of epoch {self.epoch}"
        if self.batch == len(self.train_batches):
            return f"epoch {self.epoch + 1} before its test pass"
        return f"epoch {self.epoch + 1} after batch {self.batch} of {len(self.train_batches)}"

    def resume_hint(self) -> str:
        if self.good is None:
            return "no checkpoint of this run was written"
        path, where = self.good
        return f"the last good checkpoint is {path} ({where}); continue with: " \
               f"python train.py --resume {path}"

    def on_start(self, state: dict) -> None:
        state["epoch"], state["t"] = self.epoch, self.step  # continue a resumed run

    def on_start_epoch(self, state: dict) -> None:
        self.model.train()
        if self.batch == 0:  # a new epoch; a resumed one keeps its restored meters
            self.epoch_rng = self.generator.get_state()
            self.meters.reset()
        self.first_batch = self.batch
        self.epoch_started = time.perf_counter()
        # A fresh bar over the base batches each epoch: never a wrapper of last epoch's wrapper.
        self.bar = tqdm(self.train_batches.starting_at(self.batch), total=len(self.train_batches),
                        initial=self.batch, desc=f"epoch {state['epoch'] + 1}/{state['maxepoch']}",
                        unit="batch", leave=False, dynamic_ncols=True)
        state["iterator"] = self.bar

    def on_forward(self, state: dict) -> None:
        add_to_meters(self.meters, state)
        if (self.batch + 1) % self.cfg.log_every == 0:
            self.flush_meters(in_batch=True)
            self.bar.set_postfix(loss=f"{self.meters.loss.value()[0]:.4f}",
                                 acc=f"{self.meters.accuracy.value()[0]:.2f}%", refresh=False)

    def flush_meters(self, in_batch: bool = False) -> None:
        """Add the queued batches to the meters; raise Diverged if any loss is not finite.
        `in_batch`: called between a batch's forward pass and its update."""
        queued = len(self.meters.pending)
        bad = self.meters.flush()
        if bad is not None:
            first = int(in_batch) - queued + 1 + bad  # the bad batch, counted from the position
            raise Diverged(f"training diverged: the loss is not finite at epoch {self.epoch + 1}, "
                           f"batch {self.batch + first} (step {self.step + first}), and "
                           "nothing was saved from then on (a lower --lr may help)")

    def on_update(self, state: dict) -> None:
        self.scheduler.step()
        self.step = state["t"] + 1
        self.batch += 1

    def on_end_epoch(self, state: dict) -> None:
        self.bar.close()
        train_seconds = time.perf_counter() - self.epoch_started
        trained = (self.batch - self.first_batch) * self.cfg.batch_size
        lr = self.optimizer.param_groups[0]["lr"]
        self.flush_meters()
        train = self.meters.summary()
        test = self.evaluator.run()
        self.epoch, self.batch = state["epoch"], 0
        self.epoch_rng = self.generator.get_state()
        row = {"epoch": self.epoch, "lr": lr,
               "train_images_per_s": min(trained, len(self.train_batches.split)) / train_seconds,
               "seconds": time.perf_counter() - self.epoch_started}
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"test_{k}": v for k, v in test.items()})
        best = test["accuracy"] > self.best_accuracy
        if best:
            self.best_accuracy = test["accuracy"]
        self.run.append_metrics(row)
        if best:  # best.pt before last.pt: last.pt never points past a best.pt not written
            self.save(self.run.best)
        self.save(self.run.last)
        state["metrics"] = row
        tqdm.write(f"epoch {self.epoch}/{state['maxepoch']}  "
                   f"train loss {train['loss']:.4f} acc {train['accuracy']:.2f}%  "
                   f"test loss {test['loss']:.4f} acc {test['accuracy']:.2f}%{' *' if best else ''}  "
                   f"lr {lr:.2e}  {row['seconds']:.1f}s ({row['train_images_per_s']:.0f} img/s)")

    def save(self, path: Path) -> None:
        """Write a checkpoint of the current position; never one with non-finite weights."""
        self.flush_meters()
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise Diverged(f"training diverged: the weights are not finite at {self.where()}, "
                           f"so they were not saved to {path.name}")
        save_checkpoint(path, {
            "model": self.model.state_dict(), "model_args": self.model_args,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "best_accuracy": self.best_accuracy, "meters": self.meters.state_dict(),
            "config": dataclasses.asdict(self.cfg), "classes": list(self.classes),
            "torch_rng": torch.get_rng_state(), "data_rng": self.epoch_rng,
        })
        self.good = (path, self.where())

    def restore(self, checkpoint: dict, source: Path) -> None:
        saved = checkpoint["config"]
        if checkpoint["epoch"] >= self.cfg.epochs:
            raise UserError(f"the checkpoint has finished {checkpoint['epoch']} of --epochs "
                            f"{self.cfg.epochs}; pass a larger --epochs to train further")
        if saved.get("seed") != self.cfg.seed:
            raise UserError(f"--seed {self.cfg.seed} cannot apply to a resumed run: its random "
                            f"state comes from the checkpoint (seed {saved.get('seed')})")
        batch = checkpoint["batch"]
        if batch:
            for name in MID_EPOCH_FIXED:
                if saved.get(name) != getattr(self.cfg, name):
                    raise UserError(
                        f"the checkpoint stopped inside epoch {checkpoint['epoch'] + 1}, whose "
                        f"batches depend on --{name.replace('_', '-')} {saved.get(name)}; keep "
                        "it to finish the epoch, or resume from a checkpoint of an epoch's end")
        check_structure(checkpoint["model_args"], self.model_args)
        load_state(self.model, checkpoint["model"], "model")
        load_state(self.optimizer, checkpoint["optimizer"], "optimizer state")
        load_state(self.scheduler, checkpoint["scheduler"], "learning-rate schedule")
        self.epoch, self.batch, self.step = checkpoint["epoch"], batch, checkpoint["step"]
        self.best_accuracy = checkpoint["best_accuracy"]
        try:
            torch.set_rng_state(checkpoint["torch_rng"])
            self.generator.set_state(checkpoint["data_rng"])
            if batch:
                self.meters.load_state_dict(checkpoint["meters"])
        except (RuntimeError, KeyError, TypeError, ValueError) as error:
            raise UserError(f"the checkpoint's random or meter state is damaged ({error})") from None
        self.epoch_rng = checkpoint["data_rng"]
        self.good = (source, self.where())
        self.apply_schedule(saved)

    def apply_schedule(self, saved: dict) -> None:
        """Flags --lr, --lr-decay and --lr-decay-steps given on resume: the rate becomes what
        the new schedule gives at the current step, and decays by it from there."""
        changed = [name for name in SCHEDULE if saved.get(name) != getattr(self.cfg, name)]
        if not changed:
            return
        gamma = self.cfg.lr_decay ** (1.0 / self.cfg.lr_decay_steps)
        lr = self.cfg.lr * gamma ** self.step
        self.scheduler.gamma = gamma
        self.scheduler.base_lrs = [self.cfg.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"] = self.cfg.lr, lr
        self.scheduler._last_lr = [lr for _ in self.optimizer.param_groups]
        given = " ".join(f"--{n.replace('_', '-')} {getattr(self.cfg, n)}" for n in changed)
        self.notes.append(f"{given} in effect from step {self.step} (learning rate now {lr:.3g})")


def check_dataset(checkpoint: dict, cfg: Any, classes: tuple[str, ...], allow: bool) -> None:
    """A checkpoint is used on the dataset it was trained on, unless `allow` says otherwise."""
    saved = checkpoint["config"].get("dataset")
    if allow or (saved == cfg.dataset and tuple(checkpoint["classes"]) == tuple(classes)):
        return
    raise UserError(f"the checkpoint was trained on {saved} (classes "
                    f"{', '.join(checkpoint['classes'])}), not on {cfg.dataset} (classes "
                    f"{', '.join(classes)}); pass --allow-other-dataset to use it anyway")


def evaluate_checkpoint(cfg: Any, checkpoint: dict, allow_other_dataset: bool = False
                        ) -> tuple[dict[str, float], Any, tuple[str, ...]]:
    """Test-set loss and accuracy, confusion matrix (rows: true class) and class names."""
    device = resolve_device(cfg.device)
    test = load_split(cfg.dataset, cfg.data_dir, False, cfg.download, cfg.test_samples)
    check_dataset(checkpoint, cfg, test.classes, allow_other_dataset)
    args = model_args(cfg, test)
    check_structure(checkpoint["model_args"], args)
    model = CapsNet(**args).to(device)
    load_state(model, checkpoint["model"], "model")
    evaluator = Evaluator(model, make_criterion(cfg), Batches(test.to(device), cfg.batch_size),
                          configure_precision(cfg.precision, device))
    summary = evaluator.run()
    return summary, evaluator.meters.confusion.value(), test.classes
