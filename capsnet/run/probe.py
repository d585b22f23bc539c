"""The memory probe, run as `python -m capsnet.run.probe SPEC` by capsnet.run.footprint: a
training step of the run's model (capsnet.networks), optimiser and loss on random data of the
run's shape at one image, at two, then at the size the line through those two says fits SPEC's
budget; it prints [images, peak bytes] of each as JSON."""
from __future__ import annotations

import json
import resource
import sys
from typing import Any

import torch

from ..cli import exit_with

GRAPH_STEPS = 3  # reduce-overhead: a warm-up step, the step that records the graph, a replay
# The size confirmed runs twice: a CPU process's peak grows after its first step of a size (the
# allocator's free lists). At 128x128 in parts of 64, one step measured 13.0-15.0 GiB and two
# 16.7 GiB, against the run's peak of 18.3 GiB (BENCHMARKS.md).
CONFIRM_STEPS = 2


def probe(spec: dict[str, Any]) -> list[list[float]]:
    """In the probe process: [images, peak memory] after a training step of one image, of two,
    and of the size `fitting` chooses from the line through them (where it is larger; run
    CONFIRM_STEPS times), so that no size runs before it is estimated to fit. With a CUDA-graph
    compile mode, the step is compiled afresh for each size and run GRAPH_STEPS times, and the
    peak counts what the allocator reserved, graph pools included."""
    from ..config import Config
    from ..kernels import apply
    from ..networks import MODELS
    from .footprint import fitting, line_through, random_step
    from .recipe import compile_model, configure_precision, make_optimizer
    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    settings = Config(**spec["settings"])
    model = MODELS[settings.model].build(spec["model_args"], settings).to(device)
    apply(model, spec["kernels"])  # the run's forms, as the run checked them
    optimizer, _ = make_optimizer(model, settings)
    criterion = MODELS[settings.model].criterion(settings, lambda: 0.0)
    autocast = configure_precision(spec["precision"], device)
    classes, objects = spec["model_args"]["num_classes"], spec["objects"]
    mode = spec.get("compile_mode", "")

    def peak(batch: int, steps: int = 1) -> float:
        images, labels, targets = random_step(batch, spec["shape"], classes, objects, device)
        if mode:
            from torch import _dynamo
            _dynamo.reset()  # one static-shape graph per batch size, as train.py builds
        network = compile_model(model, bool(mode), mode or "default")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(GRAPH_STEPS if mode else steps):
            with autocast():
                loss = criterion(targets, labels, network(images, labels))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            return (torch.cuda.max_memory_reserved(device) if mode
                    else torch.cuda.max_memory_allocated(device))
        return peak_resident()

    points = [[batch, peak(batch)] for batch in (1, 2)]
    chosen = fitting(line_through(points), spec["target"], spec["budget"], spec["shrink"])
    if chosen > 2:
        points.append([chosen, peak(chosen, CONFIRM_STEPS)])
    return points


def peak_resident() -> float:
    """This process's peak resident size in bytes: VmHWM on Linux, which a new program starts
    afresh (ru_maxrss instead keeps the parent's peak across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            return 1024.0 * next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def main(argv: list[str]) -> int:
    """The probe process: SPEC (capsnet.run.footprint.spec_of, as JSON) in, the points out."""
    try:
        spec = json.loads(argv[0]) if len(argv) == 1 else None
    except ValueError:
        spec = None
    if not isinstance(spec, dict):
        print("usage: python -m capsnet.run.probe SPEC: the memory check before training runs "
              "it, with SPEC the JSON of capsnet.run.footprint.spec_of", file=sys.stderr)
        return 2
    from .memory import tune_allocator
    tune_allocator()  # as in the run it measures
    print(json.dumps(probe(spec)))
    return 0


if __name__ == "__main__":
    exit_with(main(sys.argv[1:]))
