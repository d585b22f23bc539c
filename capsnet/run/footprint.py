"""The memory a training step needs, known before training so that a batch too large for the
device stops at once with a batch size that fits, not with an out-of-memory crash hours in.

On a CPU, every allocation of one training step is counted first, at one and at two examples
(`bound`): their sum, never less than what is alive at once, plus the process's size and the
optimiser's state, is an upper bound of the step's peak, found in a fraction of a second. Where it
stays below the free memory, that is the answer. Where it comes near (and always on a GPU), a
fresh Python process (`python -m capsnet.run.probe SPEC`) builds the run's model and optimiser
on the run's device: it takes one training step (forward, backward, Adam) on random data of the
run's shape at the run's batch size or, above PROBE_MAX, at PROBE_MAX/2 and PROBE_MAX, and reports
the peak memory after each: PyTorch's peak allocation on CUDA, the process's peak resident size on
the CPU (which includes PyTorch itself, so the estimate errs on the high side). Beyond the probed
sizes the peak is taken to grow linearly with the batch. On this project's 2-core CPU the estimate
came within -7% to +12% of the peak that capsnet.bench measures for four shapes (BENCHMARKS.md).
A separate process keeps the probe's memory out of the run's own.
"""
from __future__ import annotations

import dataclasses
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

if TYPE_CHECKING:
    from ..config import Config

PROBE_MAX = 64  # the largest batch the probe runs
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

    def words(self, batch: int) -> str:
        """The run's first line's words for a step of `batch`."""
        return (f"a training step needs {'about' if self.measured else 'at most'} "
                f"{self.of(batch) / GiB:.2f} GiB ({self.how})")

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
    forms (capsnet.kernels.Kernels.record), which the probe takes without checking them."""
    from .recipe import CUDA_GRAPH_MODES
    size = model_args["image_size"]
    top = min(cfg.batch_size, PROBE_MAX)
    graphs = cfg.compile and device.type == "cuda" and cfg.compile_mode in CUDA_GRAPH_MODES
    return {"model_args": model_args, "shape": [model_args["in_channels"], size, size],
            "batches": [max(1, top // 2), max(2, top)],
            "compile_mode": cfg.compile_mode if graphs else "",
            "objects": objects, "device": str(device),
            "precision": resolved_precision(cfg.precision, device),
            "kernels": kernels,
            "threads": torch.get_num_threads(), "settings": {k: getattr(cfg, k) for k in SETTINGS}}


def measure(spec: dict[str, Any]) -> Footprint:
    """Run the probe in a fresh process; its peaks at spec's two batches give the line."""
    try:
        done = subprocess.run([sys.executable, "-m", "capsnet.run.probe", json.dumps(spec)],
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    except subprocess.TimeoutExpired:
        raise UserError("the memory check before training took over 10 minutes; pass "
                        "--no-memory-check to skip it") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if "out of memory" in last.lower() or done.returncode in (-9, 137):
            raise UserError(f"a training step of batch {spec['batches'][0]} already runs out of "
                            f"memory on {spec['device']} ({last}); use a smaller --batch-size, "
                            "network or image size")
        raise UserError(f"the memory check before training failed ({last}); pass "
                        "--no-memory-check to skip it")
    small, large = json.loads(lines[-1])
    b1, b2 = spec["batches"]
    per_example = max(0.0, (large - small) / (b2 - b1))
    how = (f"a step compiled in {spec['compile_mode']} mode with its CUDA graphs' memory pools"
           if spec.get("compile_mode") else "an eager step")
    return Footprint(small - per_example * b1, per_example, how)


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


def check(step: Step, spec: dict[str, Any], batch_size: int, device: torch.device
          ) -> Footprint | None:
    """Stop with one line when a training step of `batch_size` will not fit on the device, naming
    a batch size that does. On a CPU a count of the step's allocations (`bound`) that is far
    below the free memory answers at once; on a GPU, or where the count comes near the free
    memory, a step is measured in a separate process. Returns the footprint (None where the
    free memory is unknown)."""
    free = available(device)
    if free is None:
        return None
    if device.type == "cpu":
        counted = bound(step, spec)
        if counted.of(batch_size) <= HEADROOM * free:
            return dataclasses.replace(counted, how=f"{counted.how}, below the {free / GiB:.1f} "
                                       "GiB free: no step measured")
        why = (f"the count of its allocations, {counted.of(batch_size) / GiB:.1f} GiB, comes "
               f"near the {free / GiB:.1f} GiB free")
    else:
        why = f"{device.type}"
    footprint = measure(spec)
    footprint = dataclasses.replace(footprint, how=f"measured: {footprint.how} ({why})")
    need = footprint.of(batch_size)
    if need <= HEADROOM * free:
        return footprint
    fits = footprint.largest_batch(HEADROOM * free)
    shape = "x".join(map(str, spec["shape"]))
    hint = (f"--batch-size {fits} or less fits" if fits >= 1
            else "no batch fits: use a smaller network or image size")
    raise UserError(f"a training step of batch {batch_size} on {shape} images needs about "
                    f"{need / GiB:.1f} GiB ({footprint.how}), but {device} has "
                    f"{free / GiB:.1f} GiB free; {hint} (or pass --no-memory-check to try "
                    "anyway)")


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
