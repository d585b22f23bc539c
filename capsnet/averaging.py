"""Stochastic weight averaging (Izmailov et al. 2018): the equal-weight mean of a model's weights
at the end of epochs first..last, which is what a run with `--average-from first` tests, saves as
its checkpoints' model and ships. Training itself never sees the average.

    w_avg <- w_avg + (w - w_avg) / n      (n: epochs averaged so far, float32)
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple

from torch import Tensor, nn

State = dict[str, Tensor]


def average_into(average: State | None, weights: State, count: int) -> State:
    """The running mean of `count` states after adding `weights` (the count-th) to `average`,
    the mean of the first count - 1 (None when count is 1); non-float entries are the newest."""
    if average is None or count == 1:
        return {k: v.detach().clone() for k, v in weights.items()}
    for name, value in weights.items():
        if value.is_floating_point():
            average[name].add_((value.detach() - average[name]) / count)
        else:
            average[name].copy_(value)
    return average


class Averaged(NamedTuple):
    """Which epochs' weights an average holds, as a checkpoint keeps it."""
    first: int
    last: int

    @classmethod
    def of(cls, checkpoint: dict) -> Averaged | None:
        """The epochs a checkpoint's (or trained-weights file's) model averages; None: not one."""
        averaged = checkpoint.get("averaged")
        return cls(*averaged) if averaged else None

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        epochs = f"epoch {self.first}" if self.count == 1 else f"epochs {self.first}-{self.last}"
        return f"the average of the weights after {epochs}"


class WeightAverage:
    """The average of `model`'s weights from epoch `first` on (first 0: never averages)."""

    def __init__(self, model: nn.Module, first: int) -> None:
        self.model, self.first = model, first
        self.state: State | None = None
        self.epochs: Averaged | None = None

    def add(self, epoch: int) -> None:
        """Add the weights at the end of `epoch`, once (a test pass resumed after an interrupt
        ends the same epoch again)."""
        if not self.first or epoch < self.first or (self.epochs and self.epochs.last >= epoch):
            return
        self.epochs = Averaged(self.first, epoch)
        self.state = average_into(self.state, self.model.state_dict(), self.epochs.count)

    def restore(self, state: State, epochs: Averaged) -> None:
        """A checkpoint's average (already checked to fit the model), copied onto the model's
        device, and the epochs it holds."""
        current = self.model.state_dict()
        self.state = {k: v.to(current[k].device, current[k].dtype, copy=True)
                      for k, v in state.items()}
        self.epochs = epochs

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The average in the model for the duration (nothing changes before it begins)."""
        if self.state is None:
            yield
            return
        trained = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.state)
        try:
            yield
        finally:
            self.model.load_state_dict(trained)
