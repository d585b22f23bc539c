"""The memory a training step needs, measured before training so that a batch too large for the
device stops at once with a batch size that fits, not with an out-of-memory crash hours in.

A fresh Python process (`python -m capsnet.run.probe SPEC`) builds the run's model and optimiser
on the run's device: it takes one training step (forward, backward, Adam) on random data of the
run's shape at the run's batch size or, above PROBE_MAX, at PROBE_MAX/2 and PROBE_MAX, and reports
the peak memory after each: PyTorch's peak allocation on CUDA, the process's peak resident size on
the CPU (which includes PyTorch itself, so the estimate errs on the high side). Beyond the probed
sizes the peak is taken to grow linearly with the batch. On this project's 2-core CPU the estimate
came within -7% to +12% of the peak that capsnet.bench measures for four shapes (BENCHMARKS.md).
A separate process keeps the probe's memory out of the run's own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError

PROBE_MAX = 64  # the largest batch the probe runs
HEADROOM = 0.9  # the estimate may use this share of what the device has free
GiB = 2 ** 30


@dataclass(frozen=True)
class Footprint:
    """Peak memory of a training step: `fixed` + `per_example` x batch, in bytes."""
    fixed: float
    per_example: float
    how: str = "an eager step"  # what was measured, for the run's first line

    def of(self, batch: int) -> float:
        return self.fixed + self.per_example * batch

    def largest_batch(self, available: float) -> int:
        """The largest batch whose estimate fits in `available` bytes (0: none does)."""
        if self.per_example <= 0:
            return 0 if self.fixed > available else sys.maxsize
        return max(0, int((available - self.fixed) // self.per_example))


# what the run's model, loss and optimiser use
SETTINGS = ("model", "m_plus", "m_minus", "lambda_absent", "reconstruction_weight", "recipe",
            "score_loss", "lr", "lr_decay", "lr_decay_steps", "fast_kernels")


def spec_of(cfg: Any, model_args: dict[str, Any], objects: int, device: torch.device,
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
            "objects": objects, "device": str(device), "precision": cfg.precision,
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


def check(spec: dict[str, Any], batch_size: int, device: torch.device) -> Footprint | None:
    """Stop with one line when a step of `batch_size` will not fit on the device, naming a batch
    size that does. Returns the measured footprint (None where the free memory is unknown)."""
    free = available(device)
    if free is None:
        return None
    footprint = measure(spec)
    need = footprint.of(batch_size)
    if need <= HEADROOM * free:
        return footprint
    fits = footprint.largest_batch(HEADROOM * free)
    shape = "x".join(map(str, spec["shape"]))
    hint = (f"--batch-size {fits} or less fits" if fits >= 1
            else "no batch fits: use a smaller network or image size")
    raise UserError(f"a training step of batch {batch_size} on {shape} images needs about "
                    f"{need / GiB:.1f} GiB (measured: {footprint.how}), but {device} has {free / GiB:.1f} GiB free; {hint} "
                    "(or pass --no-memory-check to try anyway)")


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
