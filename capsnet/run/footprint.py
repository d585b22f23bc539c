"""The memory a training step needs, known before training, so that a batch too large for the
device is computed in micro-batches that fit (capsnet.microbatches), or stops at once with one
line, not with an out-of-memory crash hours in.

On a CPU, every allocation of one training step is counted first, at one and at two examples
(`bound`): their sum, never less than what is alive at once, plus the process's size and the
optimiser's state, is an upper bound of the step's peak, found in a fraction of a second. Where it
stays below the free memory, that is the answer. Where it comes near (and always on a GPU), a
fresh Python process (`python -m capsnet.run.probe SPEC`) builds the run's model and optimiser
on the run's device and measures the peak memory of one training step (forward, backward, Adam)
on random data of the run's shape at one image and at two: PyTorch's peak allocation on CUDA, the
process's peak resident size on the CPU (which includes PyTorch itself, so the estimate errs on
the high side). The line through them gives the largest step that fits, which the probe then
runs twice to confirm it: the batch itself, or (automatic micro-batches) the largest part that
fits. The line through the two largest steps measured is the footprint. A separate process keeps
the probe's memory out of the run's own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, TYPE_CHECKING

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..cli import resolved_precision
from ..errors import UserError
from ..microbatches import part_size, step_images

if TYPE_CHECKING:
    from ..config import Config

HEADROOM = 0.9  # the estimate may use this share of what the device has free
GiB = 2 ** 30


@dataclass(frozen=True)
class Footprint:
    """Peak memory of a training step: `fixed` + `per_example` x batch, in bytes."""
    fixed: float
    per_example: float
    how: str = "an eager step"  # what was measured or counted, for the run's first line
    measured: bool = True  # else an upper bound (`bound`)

    def of(self, batch: int) -> float:
        return self.fixed + self.per_example * batch

    def largest_batch(self, available: float) -> int:
        """The largest batch whose estimate fits in `available` bytes (0: none does)."""
        if self.per_example <= 0:
            return 0 if self.fixed > available else sys.maxsize
        return max(0, int((available - self.fixed) // self.per_example))


# what the run's model, loss and optimiser use
SETTINGS = ("model", "routing", "m_plus", "m_minus", "lambda_absent", "reconstruction_weight",
            "recipe", "score_loss", "lr", "lr_decay", "lr_decay_steps", "fast_kernels")


def spec_of(cfg: Config, model_args: dict[str, Any], objects: int, device: torch.device,
            kernels: dict[str, str]) -> dict[str, Any]:
    """What the probe process needs to rebuild the run's training step; `kernels` the run's
    forms (capsnet.kernels.Kernels.record), which the probe takes without checking them. The
    check adds what to run: `target` images, within `budget` bytes (None: no limit), or with
    `shrink` the most that fit below the target."""
    from .recipe import CUDA_GRAPH_MODES
    size = model_args["image_size"]
    graphs = cfg.compile and device.type == "cuda" and cfg.compile_mode in CUDA_GRAPH_MODES
    return {"model_args": model_args, "shape": [model_args["in_channels"], size, size],
            "target": cfg.batch_size, "budget": None, "shrink": False,
            "compile_mode": cfg.compile_mode if graphs else "",
            "objects": objects, "device": str(device),
            "precision": resolved_precision(cfg.precision, device),
            "kernels": kernels,
            "threads": torch.get_num_threads(), "settings": {k: getattr(cfg, k) for k in SETTINGS}}


def line_through(points: list[list[float]], how: str = "an eager step") -> Footprint:
    """The footprint through the two largest of the measured (images, peak bytes) points."""
    (b1, small), (b2, large) = sorted(points)[-2:]
    per_example = max(0.0, (large - small) / (b2 - b1))
    return Footprint(small - per_example * b1, per_example, how)


def fitting(footprint: Footprint, target: int, budget: float | None, shrink: bool) -> int:
    """Images per step to run: `target` where the footprint puts it within `budget`, else with
    `shrink` the most that fit (0: not one), else 0."""
    if budget is None or footprint.of(target) <= budget:
        return target
    return min(target, footprint.largest_batch(budget)) if shrink else 0


def measure(spec: dict[str, Any]) -> Footprint:
    """Run the probe in a fresh process; the line through its two largest steps."""
    try:
        done = subprocess.run([sys.executable, "-m", "capsnet.run.probe", json.dumps(spec)],
                              capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    except subprocess.TimeoutExpired:
        raise UserError("the memory check before training took over 30 minutes; pass "
                        "--micro-batch N to choose the parts yourself, or --no-memory-check "
                        "to skip it") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if "out of memory" in last.lower() or done.returncode in (-9, 137):
            raise UserError(f"a training step of the memory check ran out of memory on "
                            f"{spec['device']} ({last}); pass a smaller --micro-batch, or use a "
                            "smaller network or image size")
        raise UserError(f"the memory check before training failed ({last}); pass "
                        "--no-memory-check to skip it")
    how = (f"a step compiled in {spec['compile_mode']} mode with its CUDA graphs' memory pools"
           if spec.get("compile_mode") else "an eager step")
    return line_through(json.loads(lines[-1]), how)


def available(device: torch.device) -> float | None:
    """Bytes free for a run on the device (None where it cannot be told): the GPU's free memory,
    or the machine's MemAvailable shared by the processes of this machine."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return kib * 1024.0 / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


class Step(NamedTuple):
    """A run's training step, whose allocations `bound` counts."""
    model: nn.Module
    criterion: nn.Module  # criterion(targets, labels, output) -> the loss
    autocast: Callable[[], Any]
    objects: int  # labels per example


class Allocations(TorchDispatchMode):
    """The bytes of every storage the operations under it make, none taken as freed: their sum
    is above the most that is alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        held = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)}  # views, in-place and out= results
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in held:
                held.add(t.untyped_storage().data_ptr())
                self.bytes += t.untyped_storage().nbytes()
        return out


def random_step(batch: int, shape: tuple[int, ...], classes: int, objects: int,
                device: torch.device | None = None, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Images (batch, *shape) in [0, 1], labels ((batch,), or (batch, objects) of distinct
    classes in ascending order) and reconstruction targets: a training step's inputs, drawn by
    `generator` (else the global one)."""
    images = torch.rand(batch, *shape, device=device, generator=generator)
    labels = torch.stack([torch.randperm(classes, device=device, generator=generator)[:objects]
                          for _ in range(batch)]).sort(dim=1).values
    labels = labels[:, 0] if objects == 1 else labels
    targets = images if objects == 1 else images[:, None].expand(-1, objects, -1, -1, -1)
    return images, labels, targets


def allocated(step: Step, shape: tuple[int, ...], classes: int, batch: int) -> int:
    """Bytes of every tensor one training step of `batch` random examples makes (forward, loss
    and gradients; none of the model's state or the run's random numbers touched)."""
    images, labels, targets = random_step(batch, shape, classes, step.objects,
                                          generator=torch.Generator().manual_seed(0))
    weights = [p for p in step.model.parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), Allocations() as counted:
        with step.autocast():
            loss = step.criterion(targets, labels, step.model(images, labels))
        torch.autograd.grad(loss, weights)
    return counted.bytes


def bound(step: Step, spec: dict[str, Any]) -> Footprint:
    """An upper bound of a CPU training step's peak resident size, from no measurement of it:
    this process's size now, four copies of the weights (gradients, Adam's two moments and its
    update) and every allocation of a step, counted at two examples, then one (so that what a
    first step makes once counts as growing with the batch)."""
    size = spec["model_args"]["image_size"]
    shape = (spec["model_args"]["in_channels"], size, size)
    classes = spec["model_args"]["num_classes"]
    two, one = (allocated(step, shape, classes, batch) for batch in (2, 1))
    weights = sum(p.numel() * p.element_size() for p in step.model.parameters())
    return Footprint(resident() + 4 * weights + 2 * one - two, two - one,
                     "every allocation of a step counted", measured=False)


def resident() -> float:
    """This process's resident size now, in bytes (0 where it cannot be told)."""
    try:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0.0


class Plan(NamedTuple):
    """What the memory check decided, for the run and its first line."""
    micro_batch: int  # images per part of a batch (0: the whole batch at once)
    words: str  # the first line's words ("": nothing checked)


def check(step: Step, spec: dict[str, Any], batch_size: int, micro_batch: int,
          device: torch.device) -> Plan:
    """The micro-batches a training step of `batch_size` runs in: `micro_batch` where it is set
    and fits; where it is 0, the whole batch where it fits, else the fewest, most even parts
    that fit (capsnet.microbatches.part_size). On a CPU a count of the step's allocations
    (`bound`) far below the free memory answers at once; on a GPU, or where the count comes
    near the free memory, steps are measured in a separate process (`measure`). Stops with one
    line where not one image fits, or where the --micro-batch given does not."""
    free = available(device)
    if free is None:
        return Plan(micro_batch, "")
    want, budget = step_images(batch_size, micro_batch), HEADROOM * free
    parts = f" in micro-batches of {want}" if want < batch_size else ""
    if device.type == "cpu":
        counted = bound(step, spec)
        if counted.of(want) <= budget:
            return Plan(micro_batch, words(counted, want, parts, f"{counted.how}, below the "
                                            f"{free / GiB:.1f} GiB free: no step measured"))
        near = "comes near" if counted.of(want) <= free else "is above"
        why = (f"the count of its allocations, {counted.of(want) / GiB:.1f} GiB, {near} the "
               f"{free / GiB:.1f} GiB free")
    else:
        why = f"{device.type}"
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"memory check: measuring training steps in a separate process ({why})",
              file=sys.stderr, flush=True)
    footprint = measure({**spec, "target": want, "budget": budget, "shrink": not micro_batch})
    how = f"measured: {footprint.how} ({why})"
    fits = fitting(footprint, want, budget, shrink=not micro_batch)
    if fits >= want:
        return Plan(micro_batch, words(footprint, want, parts, how))
    shape = "x".join(map(str, spec["shape"]))
    if micro_batch:
        hint = (f"--micro-batch {footprint.largest_batch(budget)} or less fits"
                if footprint.largest_batch(budget) >= 1 else "not one image fits")
        raise UserError(f"a micro-batch of {micro_batch} {shape} images needs about "
                        f"{footprint.of(micro_batch) / GiB:.1f} GiB ({how}), but {device} has "
                        f"{free / GiB:.1f} GiB free; {hint} (--micro-batch 0: the memory "
                        "check chooses)")
    if fits < 1:
        raise UserError(f"a training step of batch {batch_size} on {shape} images needs about "
                        f"{footprint.of(batch_size) / GiB:.1f} GiB ({how}), but {device} has "
                        f"{free / GiB:.1f} GiB free; no batch fits, not even one image at a "
                        "time: use a smaller network or image size (or pass --no-memory-check "
                        "to try anyway)")
    size = part_size(batch_size, fits)
    count = -(-batch_size // size)
    return Plan(size, f"batch {batch_size} in {count} micro-batches of at most {size}: the "
                      f"whole batch needs about {footprint.of(batch_size) / GiB:.1f} GiB, "
                      f"{free / GiB:.1f} GiB are free, {size} images "
                      f"{footprint.of(size) / GiB:.1f} GiB ({how})")


def words(footprint: Footprint, batch: int, parts: str, how: str) -> str:
    """The first line's words for a step of `batch` images (`parts`: in what micro-batches)."""
    return (f"a training step{parts} needs {'about' if footprint.measured else 'at most'} "
            f"{footprint.of(batch) / GiB:.2f} GiB ({how})")


def check_data(splits: dict[str, Any], device: torch.device) -> None:
    """A run holds its splits on the device as uint8 (320,000 affNIST images: 0.5 GB). On a GPU,
    stop with one line when they would not fit in its free memory; on the CPU they are already
    in memory when this runs. `splits`: the --NAME-samples flag of each split -> the split."""
    if device.type != "cuda":
        return
    free = available(device)
    need = sum(s.images.nbytes + s.labels.nbytes for s in splits.values() if s is not None)
    if free is None or need <= HEADROOM * free:
        return
    sizes = ", ".join(f"{len(s):,} {name} images" for name, s in splits.items() if s is not None)
    flags = " or ".join(f"--{name}-samples N" for name, s in splits.items()
                        if s is not None and name != "validation")
    raise UserError(f"the data ({sizes}) need {need / GiB:.2f} GiB on {device}, which has "
                    f"{free / GiB:.2f} GiB free; pass {flags} to use the first N")
