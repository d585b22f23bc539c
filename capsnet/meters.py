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

    def totals(self) -> Tensor:
        """What the meters counted, as one float64 vector that sums across processes: loss,
        margin and reconstruction sums, examples, errors, then the confusion matrix."""
        self.flush()
        counts = [self.loss.sum, self.margin.sum, self.reconstruction.sum, self.loss.n,
                  float(self.accuracy.sum[1]), float(self.accuracy.n)]
        confusion = torch.from_numpy(self.confusion.conf).to(torch.float64).flatten()
        return torch.cat([torch.tensor(counts, dtype=torch.float64), confusion])

    def summary(self) -> dict[str, float]:
        return summary_of(self.totals())


def summary_of(totals: Tensor) -> dict[str, float]:
    """Mean loss, margin and reconstruction parts, and accuracy in percent, of Meters.totals()."""
    loss, margin, reconstruction, n, errors, count = totals[:6].tolist()
    return {"loss": loss / max(n, 1), "margin": margin / max(n, 1),
            "reconstruction": reconstruction / max(n, 1),
            "accuracy": 100.0 * (1.0 - errors / max(count, 1))}


def confusion_of(totals: Tensor) -> Tensor:
    """The confusion matrix (rows: true class) of Meters.totals(), as int64."""
    classes = int(round((totals.numel() - 6) ** 0.5))
    return totals[6:].view(classes, classes).round().long()
