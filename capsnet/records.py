"""What the training loop publishes, as named records: its listeners (the dashboard) read these
and nothing else of the loop."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import numpy as np
from torch import nn

from .data.batches import Sample
from .meters import Totals

SHOWCASE = 1000  # first test examples a listener may pick the images it shows from


class Showcase(NamedTuple):
    """What the figure windows draw from: the model to evaluate, its autocast and the first
    SHOWCASE test examples (a fixed batch, on the model's device)."""
    model: nn.Module
    autocast: Callable[[], Any]
    samples: Sample
    classes: tuple[str, ...]
    objects: int  # labels per example
    capsules: bool  # a decoder and routing to show (CapsNet; not the baseline)
    micro_batch: int = 0  # images per forward pass (capsnet.microbatches; 0: all at once)


class RunStart(NamedTuple):
    showcase: Showcase
    history: list[dict[str, str]]  # metrics.csv's rows of the epochs done before this start
    resumed_at: float | None  # epochs done where a resumed run goes on (None: a new run)


class Progress(NamedTuple):
    """The running totals after a training step."""
    epoch: int  # epochs complete before this one
    batch: int  # batches of this epoch done, the one just updated included
    batches: int  # batches in an epoch
    totals: Totals  # this epoch's so far, over all processes, as last summed
    step_seconds: float  # this epoch's time in training steps (forward, backward, update)
    lr: float


class EpochEnd(NamedTuple):
    epoch: int  # the epoch just completed (1-based)
    row: dict[str, float]  # its metrics.csv row
    confusion: np.ndarray  # its test confusion matrix (rows: true class)


class Listener(Protocol):
    def on_start_epoch(self, progress: Progress) -> None: ...
    def on_progress(self, progress: Progress) -> None: ...
    def on_epoch(self, end: EpochEnd) -> None: ...
    def close(self) -> None: ...
