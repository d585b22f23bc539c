"""Several subscribers per torchnet Engine hook."""
from __future__ import annotations

from typing import Any, Callable

Hook = Callable[[dict], None]


class Hooks(list):
    """Several functions behind one Engine hook, called in the order they subscribed."""

    def __call__(self, state: dict) -> None:
        for hook in self:
            hook(state)


def subscribe(engine: Any, event: str, hook: Hook) -> None:
    """Add `hook` to an Engine event (on_start, on_sample, on_forward, on_end_epoch, ...)."""
    engine.hooks.setdefault(event, Hooks()).append(hook)
