"""capsnet: Capsule Networks with dynamic routing, trained with torchnet.

The model and loss load on first use, so that torch-free parts (the dashboard server) start fast.
"""
from __future__ import annotations

import os
from importlib import import_module
from typing import Any

# PyTorch's CPU allocator asks the kernel for transparent huge pages when this is set: training
# allocates tensors of hundreds of MB every step, and faulting them in 4 KiB pages took about a
# third of the CPU time (see BENCHMARKS.md). Set THP_MEM_ALLOC_ENABLE=0 to turn it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_EXPORTS = {"CapsNet": "model", "CapsNetOutput": "model", "dynamic_routing": "model",
            "squash": "model", "CapsuleLoss": "loss", "margin_loss": "loss",
            "reconstruction_loss": "loss"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
