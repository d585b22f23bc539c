"""How a run trains, from its settings: the optimiser and its schedule, the precision and the
compiler (the loss is its model's: capsnet.networks). The run builder (capsnet.run.build) and the
memory probe (capsnet.run.probe) both make their training steps from these."""
from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Any, Callable, TYPE_CHECKING

import torch
from torch import nn

from ..model import CapsNetOutput

if TYPE_CHECKING:
    from ..config import Config

def make_optimizer(model: nn.Module, cfg: Config) -> tuple[torch.optim.Adam,
                                                      torch.optim.lr_scheduler.ExponentialLR]:
    """Adam with the rate decayed by lr_decay every lr_decay_steps, continuously (step per batch)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)  # one pass per step
    scheduler = torch.optim.lr_scheduler.ExponentialLR(
        optimizer, gamma=cfg.lr_decay ** (1.0 / cfg.lr_decay_steps))
    return optimizer, scheduler


Autocast = Callable[[], torch.autocast]


def configure_precision(precision: str, device: torch.device,
                        deterministic: bool = False) -> Autocast:
    """Set the float32 matmul mode and the kernel choice; return the autocast context for
    forward passes. cuDNN's benchmark mode picks kernels by timing and some CUDA kernels
    accumulate with atomics, so a CUDA run repeats bit for bit only with `deterministic`
    (deterministic kernels, a warning for an operation that has none)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic or torch.are_deterministic_algorithms_enabled():
        # only where it changes something: the call imports the compiler (2 s)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
    return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                             enabled=precision == "bf16")


# compile modes that capture CUDA graphs, whose memory pools the memory check must measure
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class CompiledOrEager:
    """A compiled model that falls back to the eager one, with one warning, the first time
    compiling it fails (at any call: the compiler works when first called on a shape)."""

    def __init__(self, model: nn.Module, compiled: Callable[..., CapsNetOutput]) -> None:
        self.model, self.compiled = model, compiled

    def __call__(self, *args: Any, **kwargs: Any) -> CapsNetOutput:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # the compiler's failures have many types
                reason = (str(error).strip().splitlines() or [""])[0][:200]
                print(f"warning: --compile failed ({type(error).__name__}: {reason}); running "
                      "eager from here on", file=sys.stderr)
                self.compiled = None
        return self.model(*args, **kwargs)


def compile_model(model: nn.Module, enabled: bool, mode: str = "default"
                  ) -> Callable[..., CapsNetOutput]:
    """torch.compile the model in `mode` (config.COMPILE_MODES) when asked; where compiling
    fails, run eager with one warning."""
    if not enabled:
        return model
    try:
        # capsnet.spectral's lru_cache'd DFT matrices are pure functions of sizes: tracing
        # through the cache is correct, so Dynamo's warning about it is noise here.
        warnings.filterwarnings("ignore", message=".*functools.lru_cache.*wrapped function")
        return CompiledOrEager(model, torch.compile(model, mode=None if mode == "default"
                                                    else mode))
    except Exception as error:  # torch.compile is missing or refuses this platform
        print(f"warning: --compile unavailable ({error}); running eager", file=sys.stderr)
        return model
