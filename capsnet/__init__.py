"""capsnet: Capsule Networks with dynamic routing, trained with torchnet.

The model and loss load on first use, so that torch-free parts (the dashboard server) start fast.
Importing the package changes nothing in the process: the commands that train (train.py, the
benchmark, the experiments) tune the allocator themselves (capsnet.run.memory).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"CapsNet": "model", "CapsNetOutput": "model", "dynamic_routing": "routing.dynamic",
            "squash": "squashing", "CapsuleLoss": "loss", "margin_loss": "loss",
            "reconstruction_loss": "loss", "pretrained": "weights", "prepare_digit": "digits"}
__all__ = sorted(_EXPORTS)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
