"""One place builds a run: device, process group, data, model, optimiser, schedule, precision,
compile and the distributed wrapper. train.py, --eval and the benchmark all start here."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from ..data.batches import Batches, make_batches
from ..data.datasets import DATASETS
from ..data.records import Split
from ..data.splits import hold_out, load_split
from .distributed import World
from ..cli import resolve_device, resolved_precision
from ..config import Config
from ..errors import UserError
from .footprint import Plan, Step, spec_of
from .footprint import check as check_footprint
from .footprint import check_data
from ..kernels import Kernels, checked
from ..networks import MODELS
from .recipe import Autocast, compile_model, configure_precision, make_optimizer


def model_args(cfg: Config, split: Split) -> dict[str, Any]:
    """The model's arguments (capsnet.networks): shapes from the dataset, the rest from the
    config."""
    _, channels, size, _ = split.images.shape
    canvas = DATASETS[cfg.dataset].canvas
    if cfg.crop and canvas:
        raise UserError(f"--crop is not allowed with {cfg.dataset}: it places its digits on a "
                        f"{canvas}x{canvas} canvas itself")
    if cfg.crop > size:
        raise UserError(f"--crop {cfg.crop} is not allowed: the images are {size}x{size}")
    return {"in_channels": channels, "image_size": canvas or cfg.crop or size,
            "num_classes": len(split.classes),
            **MODELS[cfg.model].args(cfg, DATASETS[cfg.dataset].objects)}


def check_input_side(cfg: Config) -> None:
    """Refuse, before any data is read, an input side the model cannot take."""
    entry = DATASETS[cfg.dataset]
    side = entry.canvas or cfg.crop or (entry.shape[-1] if entry.shape else cfg.image_size)
    smallest = MODELS[cfg.model].smallest_image
    if side < smallest:
        what = ("--crop" if cfg.crop else "--image-size" if not entry.shape else
                f"{cfg.dataset}'s images")
        raise UserError(f"{what} {side} is too small for {cfg.model}: its inputs must be at "
                        f"least {smallest}x{smallest}")


def check_structure(saved: dict[str, Any], now: dict[str, Any], model: str) -> None:
    """A checkpoint's weights fit a model only if these arguments agree."""
    differ = [k for k in MODELS[model].structure if saved.get(k) != now[k]]
    if differ:
        raise UserError("the checkpoint does not fit this dataset and config ("
                        + ", ".join(f"{k}: saved {saved.get(k)}, now {now[k]}" for k in differ) + ")")


def check_dataset(checkpoint: dict, cfg: Config, classes: tuple[str, ...] = (),
                  allow: bool = False) -> None:
    """A checkpoint is used on the dataset it was trained on, or on one that declares it tests
    that dataset's checkpoints (affNIST: mnist40), unless `allow` says otherwise. Checked with
    the dataset's declared classes before any data is read (`classes` ()), and with the files'
    classes after."""
    classes = classes or DATASETS[cfg.dataset].classes
    saved = checkpoint["config"].get("dataset")
    fits = saved == cfg.dataset or saved in DATASETS[cfg.dataset].tests
    if allow or (fits and (not classes or tuple(checkpoint["classes"]) == tuple(classes))):
        return
    named = f" (classes {', '.join(classes)})" if classes else ""
    raise UserError(f"the checkpoint was trained on {saved} (classes "
                    f"{', '.join(checkpoint['classes'])}), not on {cfg.dataset}{named}; pass "
                    "--allow-other-dataset to use it anyway")


@dataclass(frozen=True)
class RunParts:
    """Everything a training run, an evaluation or a benchmark runs with."""
    cfg: Config
    world: World
    device: torch.device
    model: nn.Module  # the plain model (capsnet.networks): checkpoints and evaluation
    train_network: Callable[..., Any]  # the model as trained (compiled, DDP-wrapped): its output
    eval_network: Callable[..., Any]  # compiled, never wrapped (no collectives): its output
    criterion: nn.Module  # CapsuleLoss, BaselineLoss: parts(targets, labels, output, weights)
    autocast: Autocast
    optimizer: torch.optim.Adam
    scheduler: torch.optim.lr_scheduler.ExponentialLR
    generator: torch.Generator  # draws every pass's order and shifts
    model_args: dict[str, Any]
    classes: tuple[str, ...]
    train_batches: Batches | None  # None: a run that does not train
    test_batches: Batches
    validation_batches: Batches | None  # the held-out split, when --validation-samples
    micro_batch: int  # images per part of a batch (capsnet.microbatches; 0: the whole batch)
    memory: str  # what the memory check found, for the first line ("": not checked)
    no_sync: Callable[[], Any]  # DDP's no_sync: a backward pass that leaves the gradients local
    kernels: Kernels  # the forms the model computes with, as checked at its build

    @property
    def capsules(self) -> bool:
        """Whether the model has capsules: a decoder and routing to show."""
        return MODELS[self.cfg.model].capsules

    @property
    def objects(self) -> int:
        """Digits (labels) per example of the dataset."""
        return DATASETS[self.cfg.dataset].objects

    def batches(self, split: Split, train: bool, limit: int = 0) -> Batches:
        """This process's batches of `split` on the run's device (capsnet.data.batches)."""
        return batches_of(self.cfg, split, self.device, self.generator, self.world, train, limit)


def batches_of(cfg: Config, split: Split, device: torch.device, generator: torch.Generator,
               world: World, train: bool, limit: int = 0) -> Batches:
    """A process's batches of `split` on `device`, its order and shifts drawn by `generator`."""
    return make_batches(DATASETS[cfg.dataset], split.to(device), cfg.batch_size, train,
                        generator, cfg.shift, cfg.crop, world.rank, world.size, limit)


def run_progress(scheduler: torch.optim.lr_scheduler.LRScheduler,
                 steps: int) -> Callable[[], float]:
    """The fraction of the run's `steps` taken, which the scheduler counts (and a checkpoint
    keeps); 1 for a run that does not train. (spread_margin holds the margin at its last value
    past 1.)"""
    return lambda: scheduler.last_epoch / steps if steps else 1.0


def build_run(cfg: Config, train: bool = True,
              splits: tuple[Split | None, Split] | None = None) -> RunParts:
    """The parts of a run of `cfg`, each made from those before it: with `train`, the training
    split too; `splits` (train, test) instead of the dataset's files."""
    world = distributed.join(cfg.device)
    device = world.device if world.distributed else resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    check_input_side(cfg)
    if splits is None:
        splits = (load_split(cfg.dataset, cfg.data_dir, True, cfg.download,
                             0 if cfg.validation_samples else cfg.train_samples,
                             cfg.image_size) if train else None,
                  load_split(cfg.dataset, cfg.data_dir, False, cfg.download,
                             0 if DATASETS[cfg.dataset].canvas else cfg.test_samples,
                             cfg.image_size))  # a canvas takes the partners of its first
        # --test-samples digits from the whole test split
        validation, train_split = hold_out(splits[0], cfg.validation_samples, cfg.train_samples)
    else:
        validation, train_split = None, splits[0]
    test_split = splits[1]
    check_data({"train": train_split, "validation": validation, "test": test_split}, device)
    args = model_args(cfg, train_split or test_split)
    model = MODELS[cfg.model].build(args, cfg).to(device)
    kernels = checked(model, args, device, world)
    autocast = configure_precision(resolved_precision(cfg.precision, device), device,
                                   cfg.deterministic)
    train_batches = (batches_of(cfg, train_split, device, generator, world, True)
                     if train_split is not None else None)
    optimizer, scheduler = make_optimizer(model, cfg)
    steps = cfg.epochs * len(train_batches) if train_batches is not None else 0
    criterion = MODELS[cfg.model].criterion(cfg, run_progress(scheduler, steps))
    objects = DATASETS[cfg.dataset].objects
    plan = (check_footprint(Step(model, criterion, autocast, objects),
                            spec_of(cfg, args, objects, device, kernels.record()),
                            cfg.batch_size, cfg.micro_batch, device)
            if train and cfg.memory_check else Plan(cfg.micro_batch, ""))
    eval_network = compile_model(model, cfg.compile, cfg.compile_mode)
    train_network, no_sync = eval_network, contextlib.nullcontext
    if world.distributed:
        wrapped = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                          else None)
        train_network = compile_model(wrapped, cfg.compile, cfg.compile_mode)
        no_sync = wrapped.no_sync
    return RunParts(
        cfg=cfg, world=world, device=device, model=model, train_network=train_network,
        eval_network=eval_network, criterion=criterion, autocast=autocast, optimizer=optimizer,
        scheduler=scheduler, generator=generator, model_args=args, classes=test_split.classes,
        train_batches=train_batches,
        test_batches=batches_of(cfg, test_split, device, generator, world, False,
                                cfg.test_samples),
        validation_batches=(batches_of(cfg, validation, device, generator, world, False)
                            if validation else None),
        micro_batch=plan.micro_batch, memory=plan.words, no_sync=no_sync, kernels=kernels)
