"""Ctrl-C and SIGTERM during training take effect between batches, never inside one.

While training, the signals only set a flag; the training and test loops call `check()` before
each batch, which raises KeyboardInterrupt there. So an interrupt never lands inside an
optimizer step or a checkpoint write, and the saved state is the state after a whole batch.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
requested: list[int] = []  # signals received since deferring began


def check(state: Any = None) -> None:
    """Raise KeyboardInterrupt if a stop was requested (an Engine hook: `state` is unused)."""
    if requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within this block, SIGINT and SIGTERM request a stop at the next `check()`."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    requested.clear()
    for sig in SIGNALS:
        signal.signal(sig, lambda number, frame: requested.append(number))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        requested.clear()
