"""Training and evaluation speed of CapsNet on random data shaped like a dataset's.

python -m capsnet.bench [--device cpu|cuda] [--batch-size N] [--precision fp32|tf32|bf16]
                        [--compile] [--dataset NAME] [--preset NAME] [--conv1-channels N ...]
                        [--json PATH]

Rates are the median of --repeats timed passes. Training images/s cover the forward pass,
backward pass and optimizer step of train.py, run by the same torchnet Engine and fed by the same
on-device batch pipeline (random order, 2 px shifts). On CUDA a full epoch (60,000 training +
10,000 test images) is timed; on the CPU it is extrapolated from the measured rates.
Under torchrun (`torchrun --nproc_per_node=N -m capsnet.bench ...`) every process trains its
share of each batch, as train.py does, and the rates are those of all processes together.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torchnet.engine import Engine

from .cli import (ArgumentParser, at_least, device_name, exit_status, exit_with, precision_label,
                  resolve_device)
from .data.splits import random_split
from .microbatches import forward_in_parts, step_images
from .run import distributed
from .run.build import build_run
from .run.footprint import measure, spec_of
from .run.memory import tune_allocator
from .run.storage import write_file
from .training import forward_step

TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
NETWORK = ("model", "dataset", "image_size", "crop", "conv1_channels", "primary_types",
           "primary_dim", "class_dim", "routing", "leaky_routing", "routing_iterations",
           "baseline_channels", "baseline_hidden", "recipe")  # settings the bench takes


def sync(device: torch.device, world: distributed.World) -> None:
    """Wait for the device's queued work, and for every other process to get here too."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    world.sum(torch.zeros(1))


def timed(device: torch.device, world: distributed.World, work: Callable[[], int],
          repeats: int) -> float:
    """Median images per second of `repeats` calls of work(), which returns its image count
    (over all processes)."""
    rates = []
    for _ in range(repeats):
        sync(device, world)
        start = time.perf_counter()
        images = work()
        sync(device, world)
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by PyTorch; on the CPU, the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PROBE = 64  # test examples whose capsule lengths, at the initial weights, compare settings


def run(device_choice: str, batch_size: int, precision: str, compile: bool,
        steps: int, warmup: int, repeats: int, network: dict[str, Any] | None = None,
        footprint: bool = False, compile_mode: str = "default", micro_batch: int = 0
        ) -> dict[str, Any]:
    """`network`: Config settings of the dataset and network (dataset, widths, crop, ...);
    `micro_batch`: images per part of each batch (0: the whole batch)."""
    from .config import Config
    # memory_check off: the bench measures its own peak (and --footprint, the check's estimate)
    cfg = Config(**{"shift": 2, **(network or {})}, batch_size=batch_size, precision=precision,
                 compile=compile, compile_mode=compile_mode, device=device_choice,
                 memory_check=False, micro_batch=micro_batch)
    split = functools.partial(random_split, cfg.dataset, image_size=cfg.image_size)  # (count, seed)
    probe = resolve_device(device_choice)
    full = probe.type == "cuda"
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    train_count = TRAIN_IMAGES if full else steps * batch_size * processes
    test_count = TEST_IMAGES if full else steps * batch_size * processes
    parts = build_run(cfg, splits=(split(train_count, 1), split(test_count, 0)))
    device, world, model = parts.device, parts.world, parts.model
    for line in parts.kernels.warnings("timing", "") if world.main else []:
        print(line, file=sys.stderr, flush=True)
    train_step = forward_step(parts.train_network, parts.criterion, parts.autocast, train=True,
                              micro_batch=parts.micro_batch, no_sync=parts.no_sync)
    eval_step = forward_step(parts.eval_network, parts.criterion, parts.autocast, train=False,
                             micro_batch=parts.micro_batch)
    trainer, evaluator = Engine(), Engine()  # the loops train.py runs
    trainer.hooks["on_update"] = lambda state: parts.scheduler.step()

    def train(source: Any) -> int:  # capsnet.data.batches.Batches
        model.train()
        trainer.train(train_step, source, 1, parts.optimizer)
        return len(source.split)

    def evaluate(source: Any) -> int:
        model.eval()
        with torch.inference_mode():
            evaluator.test(eval_step, source)
        return len(source.split)

    sync(device, world)
    first = time.perf_counter()  # the first passes: compiling, when --compile, and warming up
    probe = probe_lengths(parts)
    warm = warmup * batch_size * processes
    train(parts.batches(split(warm, 1), True))
    evaluate(parts.batches(split(warm, 0), False))
    sync(device, world)
    first = time.perf_counter() - first
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_rate = timed(device, world, lambda: train(parts.train_batches), repeats)
    eval_rate = timed(device, world, lambda: evaluate(parts.test_batches), repeats)
    steady = warm / train_rate + (warm + batch_size) / eval_rate  # those passes, warm
    at_once = step_images(batch_size, micro_batch)
    estimate = (measure({**spec_of(cfg, parts.model_args, parts.objects, device,
                                   parts.kernels.record()), "target": at_once}
                        ).of(at_once) / 2 ** 20 if footprint else None)
    return {
        "train_images_per_s": train_rate, "estimated_memory_mb": estimate, "eval_images_per_s": eval_rate,
        "first_passes_seconds": first, "compile_seconds": max(0.0, first - steady),
        "probe_lengths": probe.tolist(), "compile_mode": compile_mode if compile else None,
        "epoch_seconds": TRAIN_IMAGES / train_rate + TEST_IMAGES / eval_rate,
        "epoch_measured": full, "peak_memory_mb": peak_memory_mb(device),
        "device": device_name(device), "processes": world.size, "batch_size": batch_size,
        "micro_batch": micro_batch,
        "precision": precision, "compile": compile, "repeats": repeats,
        "precision_label": precision_label(precision, device),
        "kernels": parts.kernels.record(), "kernels_line": parts.kernels.line(),
        "dataset": cfg.dataset, "parameters": sum(p.numel() for p in model.parameters()),
        "network": {k: getattr(cfg, k) for k in NETWORK},
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "main": world.main,
    }


def probe_lengths(parts: Any) -> torch.Tensor:
    """The capsule lengths of the first PROBE test examples at the initial weights, in the run's
    precision: the same for every setting up to its rounding (and the first compile of the test
    pass, with --compile). (PROBE or fewer, classes) on the CPU. The whole first batch goes
    through the model, so that a compiled model sees the one batch shape train.py gives it."""
    images = next(iter(parts.test_batches)).images
    parts.model.eval()
    with torch.inference_mode(), parts.autocast():
        lengths = forward_in_parts(parts.eval_network, images, parts.micro_batch).scores[:PROBE]
    return lengths.float().cpu()


def report(result: dict[str, Any]) -> str:
    how = "measured" if result["epoch_measured"] else "extrapolated"
    other = {"capsnet": "baseline_", "baseline": ("conv1", "primary", "class_dim", "leaky",
                                                  "routing")}[result["network"]["model"]]
    shown = {k: v for k, v in result["network"].items()  # the image size: the folder's only
             if k != "dataset" and (k != "image_size" or result["dataset"] == "folder")
             and not k.startswith(other)}
    network = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in shown.items())
    rows = [("device", result["device"]), ("processes", result["processes"]),
            ("data", f"{result['dataset']}-shaped, random"),
            ("network", f"{network}; {result['parameters']:,} parameters"),
            ("batch size (per process)", result["batch_size"]),
            *([("micro-batch", result["micro_batch"])] if result.get("micro_batch") else []),
            ("precision", result["precision_label"] + (f" + compile ({result['compile_mode']})"
                                                 if result["compile"] else "")),
            ("kernels", result["kernels_line"].removeprefix("kernels: ")),
            ("timed passes (median)", result["repeats"]),
            ("train images/s", f"{result['train_images_per_s']:.1f}"),
            ("eval images/s", f"{result['eval_images_per_s']:.1f}"),
            (f"epoch seconds ({how})", f"{result['epoch_seconds']:.1f}"),
            ("peak memory MB", f"{result['peak_memory_mb']:.0f}"),
            ("first passes seconds (compile, warm-up)", f"{result['first_passes_seconds']:.1f}"),
            *([("compile seconds (their time beyond the steady rate)",
                f"{result['compile_seconds']:.1f}")] if result["compile"] else []),
            *([("memory check's estimate MB", f"{result['estimated_memory_mb']:.0f}")]
              if result["estimated_memory_mb"] is not None else []),
            ("vs 2-minute reference epoch", f"{120 / result['epoch_seconds']:.2f}x")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    tune_allocator()  # the runs' allocator, before their first tensor
    from .config import COMPILE_MODES, DEVICES, PRECISIONS, PRESETS, Config, flag
    parser = ArgumentParser(prog="python -m capsnet.bench", description=__doc__)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--batch-size", type=at_least(1), default=128)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                        help="torch.compile mode (reduce-overhead, max-autotune: CUDA graphs)")
    parser.add_argument("--steps", type=at_least(1), default=10,
                        help="measured batches on the CPU (CUDA times a whole epoch)")
    parser.add_argument("--warmup", type=at_least(0), default=2, help="untimed batches first")
    parser.add_argument("--repeats", type=at_least(1), default=3,
                        help="timed passes; the median rate is reported")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--micro-batch", type=at_least(0), default=0, help="compute each batch "
                        "in parts of at most N images, as train.py's --micro-batch (0: whole)")
    parser.add_argument("--footprint", action="store_true", help="also run train.py's memory "
                        "check for this batch, to compare its estimate with the measured peak")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a dataset's network, as "
                        "train.py's --preset (flags given win)")
    for name in NETWORK:
        default = getattr(Config, name)
        kind = ({"action": argparse.BooleanOptionalAction} if isinstance(default, bool) else
                {"type": type(default),
                 "choices": Config.__dataclass_fields__[name].metadata["choices"]})
        parser.add_argument(flag(name), dest=name, help=f"as train.py's (default: {default!r})",
                            **kind)
    args = parser.parse_args(argv)
    network = {**PRESETS.get(args.preset, {}),
               **{k: v for k in NETWORK if (v := getattr(args, k)) is not None}}

    def work() -> None:
        result = run(args.device, args.batch_size, args.precision, args.compile,
                     args.steps, args.warmup, args.repeats, network, args.footprint,
                     args.compile_mode, args.micro_batch)
        if result.pop("main"):
            print(report(result))
            if args.json:
                write_file(args.json, (json.dumps(result, indent=2) + "\n").encode())
        distributed.leave()
    return exit_status(work)


if __name__ == "__main__":
    exit_with(main())
