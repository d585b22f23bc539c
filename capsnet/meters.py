"""torchnet meters fed once per logging interval, so the batch loop never waits for the device."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchnet.meter import AverageValueMeter, ClassErrorMeter, ConfusionMeter


AVERAGES = ("loss", "margin", "reconstruction")


class Meters:
    """Loss parts, accuracy and confusion of one pass over a dataset."""

    def __init__(self, num_classes: int) -> None:
        self.loss = AverageValueMeter()
        self.margin = AverageValueMeter()
        self.reconstruction = AverageValueMeter()
        self.accuracy = ClassErrorMeter(accuracy=True)
        self.confusion = ConfusionMeter(num_classes)
        self.pending: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def add(self, lengths: Tensor, labels: Tensor, margin: Tensor, reconstruction: Tensor) -> None:
        """Queue one batch: lengths (B, classes), labels (B,), batch-mean loss parts (scalars)."""
        self.pending.append((lengths.detach(), labels, margin.detach(), reconstruction.detach()))

    def flush(self) -> int | None:
        """Move the queued batches to the CPU in one transfer and add them to the meters.

        Returns the index, among the queued batches, of the first one whose loss is not finite
        (None when all are)."""
        if not self.pending:
            return None
        lengths = torch.cat([p[0] for p in self.pending]).float().cpu()
        labels = torch.cat([p[1] for p in self.pending]).cpu()
        parts = torch.stack([torch.stack(p[2:]) for p in self.pending]).float().cpu().tolist()
        bad = next((k for k, (margin, reconstruction) in enumerate(parts)
                    if not math.isfinite(margin + reconstruction)), None)
        for (batch_lengths, *_), (margin, reconstruction) in zip(self.pending, parts):
            n = batch_lengths.shape[0]
            self.margin.add(margin * n, n)
            self.reconstruction.add(reconstruction * n, n)
            self.loss.add((margin + reconstruction) * n, n)
        self.accuracy.add(lengths, labels)
        self.confusion.add(lengths, labels)
        self.pending.clear()
        return bad

    def reset(self) -> None:
        for meter in (self.loss, self.margin, self.reconstruction, self.accuracy, self.confusion):
            meter.reset()
        self.pending.clear()

    def state_dict(self) -> dict[str, Any]:
        """Everything the meters have counted, after flushing (for a mid-epoch checkpoint)."""
        self.flush()
        averages = {name: {k: float(v) for k, v in vars(getattr(self, name)).items()}
                    for name in AVERAGES}
        return {**averages, "errors": int(self.accuracy.sum[1]), "count": int(self.accuracy.n),
                "confusion": torch.from_numpy(self.confusion.conf.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        for name in AVERAGES:
            vars(getattr(self, name)).update(state[name])
        self.accuracy.sum[1], self.accuracy.n = state["errors"], state["count"]
        self.confusion.conf[...] = state["confusion"].numpy()

    def summary(self) -> dict[str, float]:
        """Mean loss, margin and reconstruction parts, and accuracy in percent."""
        self.flush()
        return {"loss": float(self.loss.value()[0]), "margin": float(self.margin.value()[0]),
                "reconstruction": float(self.reconstruction.value()[0]),
                "accuracy": float(self.accuracy.value()[0])}
