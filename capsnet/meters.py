"""torchnet meters fed once per logging interval, so the batch loop never waits for the device."""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchnet.meter import AverageValueMeter, ConfusionMeter

from .model import CapsNetOutput, predict


AVERAGES = ("loss", "score_loss", "reconstruction", "correct", "partly")


def swapped(predicted: Tensor, labels: Tensor) -> Tensor:
    """Which examples' two predicted classes (B, 2) must trade places so that a right one sits
    in the slot of the label it matches, (B,) bool; both in ascending order per example, as
    predict() and the canvas datasets give them."""
    return (predicted[:, 0] == labels[:, 1]) | (predicted[:, 1] == labels[:, 0])


def align(predicted: Tensor, labels: Tensor) -> Tensor:
    """Two predicted classes per example (B, 2), each right one in the slot of its label."""
    return torch.where(swapped(predicted, labels)[:, None], predicted.flip(1), predicted)


def align_reconstructions(output: CapsNetOutput, labels: Tensor) -> CapsNetOutput:
    """A test pass's two reconstructions per example (masked by the predicted classes, in
    ascending order) put in the slots of the labels they match, so that each predicted digit is
    scored against the true digit of its class whenever that class is present."""
    swap = swapped(predict(output.scores, 2), labels)[:, None, None, None, None]
    return output._replace(reconstructions=torch.where(swap, output.reconstructions.flip(1),
                                                       output.reconstructions))


def hits(lengths: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Which predictions are right, (B, K), and the predicted class of each label's slot,
    (B, K): the longest capsule for one label per example (B,); the two longest for two labels
    (B, 2), MultiMNIST's metric: an example is right when both of its digits are."""
    if labels.dim() == 1:
        predicted = predict(lengths)[:, None]
        labels = labels[:, None]
    elif labels.shape[1] == 2:
        predicted = align(predict(lengths, 2), labels)
    else:
        raise ValueError(f"meters count one or two labels per example, not {labels.shape[1]}")
    return predicted == labels, predicted


class Meters:
    """Loss parts, accuracy and confusion of one pass over a dataset.

    With two labels per example (MultiMNIST), `correct` counts the examples whose two longest
    capsules are exactly their two digits, `partly` those with at least one of them right, and
    the confusion matrix counts each digit against the prediction in its slot.

    Each batch is counted where it was computed, into sums on its device, without waiting for
    it and without keeping any of its tensors (a CUDA graph's replay overwrites them); the
    torchnet meters take the sums at each flush, in one transfer."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.loss = AverageValueMeter()
        self.score_loss = AverageValueMeter()
        self.reconstruction = AverageValueMeter()
        self.correct = AverageValueMeter()  # sum: examples all right; n: examples
        self.partly = AverageValueMeter()  # sum: examples with at least one label right
        self.confusion = ConfusionMeter(num_classes)
        self.sums: Tensor | None = None  # (3 + classes^2,) on the device: see add()
        self.pending: list[Tensor] = []  # each queued batch's (score loss, reconstruction) means

    def add(self, scores: Tensor, labels: Tensor, parts: Any, weights: Tensor | None = None
            ) -> None:
        """Count one batch: class scores (B, classes), labels (B,) or (B, 2), its loss parts (batch
        means, LossParts), weights (B,) 1 for the examples that count (None: all)."""
        if weights is None:
            weights = torch.ones(len(labels), device=labels.device)
        weights = weights.detach().to(torch.float64)
        right, predicted = hits(scores.detach(), labels)
        n = weights.sum()
        counted = torch.stack([n, (right.all(dim=1) * weights).sum(),
                               (right.any(dim=1) * weights).sum()])  # examples, right, partly
        cells = (labels.view(len(labels), -1) * self.num_classes + predicted).flatten()
        if self.sums is None:  # made afresh after each flush, in the mode of the pass
            self.sums = torch.zeros(3 + self.num_classes ** 2, dtype=torch.float64,
                                    device=n.device)
        self.sums[:3] += counted
        self.sums[3:].index_add_(0, cells, weights.repeat_interleave(right.shape[1]))
        means = torch.stack([parts.score_loss.detach(), parts.reconstruction.detach()]).float()
        self.pending.append(torch.cat([means, n.float()[None]]))  # a new tensor: safe to keep

    def flush(self) -> int | None:
        """Move the counted batches to the CPU in one transfer and add them to the meters.

        Returns the index, among the batches counted since the last flush, of the first one
        whose loss is not finite (None when all are)."""
        if not self.pending:
            return None
        return self.take(self.fetch())

    def fetch(self) -> Tensor:
        """Everything counted since the last flush, in one transfer to the host (the one wait
        for the device): each batch's (score loss, reconstruction, examples), then the sums."""
        both = torch.cat([torch.stack(self.pending).flatten().double(), self.sums]).cpu()
        self.sums = None
        return both

    def take(self, fetched: Tensor) -> int | None:
        """Add what fetch() gave to the torchnet meters; the index of the first batch whose loss
        is not finite, or None."""
        rows = fetched[:3 * len(self.pending)].view(-1, 3).tolist()
        sums = fetched[3 * len(self.pending):]
        self.pending.clear()
        bad = next((k for k, (score, reconstruction, _) in enumerate(rows)
                    if not math.isfinite(score + reconstruction)), None)
        for score, reconstruction, n in rows:
            self.score_loss.add(score * n, n)
            self.reconstruction.add(reconstruction * n, n)
            self.loss.add((score + reconstruction) * n, n)
        examples, right, partly = sums[:3].tolist()
        self.correct.add(right, examples)
        self.partly.add(partly, examples)
        self.confusion.conf += sums[3:].view(self.num_classes, -1).round().long().numpy()
        return bad

    def reset(self) -> None:
        for meter in (self.loss, self.score_loss, self.reconstruction, self.correct, self.partly,
                      self.confusion):
            meter.reset()
        self.pending.clear()
        self.sums = None

    def state_dict(self) -> dict[str, Any]:
        """Everything the meters have counted, after flushing (for a mid-epoch checkpoint)."""
        self.flush()
        averages = {name: {k: float(v) for k, v in vars(getattr(self, name)).items()}
                    for name in AVERAGES}
        return {**averages, "confusion": torch.from_numpy(self.confusion.conf.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        for name in AVERAGES:
            vars(getattr(self, name)).update(state[name])
        self.confusion.conf[...] = state["confusion"].numpy()

    def totals(self) -> Totals:
        """What the meters counted, flushed."""
        self.flush()
        return Totals(self.loss.sum, self.score_loss.sum, self.reconstruction.sum, self.loss.n,
                      self.correct.n - self.correct.sum, self.correct.n, self.partly.sum,
                      torch.from_numpy(self.confusion.conf).to(torch.float64))


class Totals(NamedTuple):
    """The counts of a pass so far: sums of the loss parts over the examples, the example
    counts, and the confusion matrix (rows: true class). `vector()` and `of()` carry them through
    one sum across processes."""
    loss: float  # summed over examples
    score_loss: float
    reconstruction: float
    examples: float  # examples the loss parts were summed over
    errors: float  # examples not (all) right
    counted: float  # examples the accuracy counts
    partly: float  # examples with at least one label right
    confusion: Tensor  # (classes, classes) float64

    def vector(self) -> Tensor:
        return torch.cat([torch.tensor(self[:-1], dtype=torch.float64), self.confusion.flatten()])

    @classmethod
    def of(cls, vector: Tensor) -> Totals:
        """The Totals whose vector() this is (summed over processes, say)."""
        counts = len(cls._fields) - 1
        classes = int(round((vector.numel() - counts) ** 0.5))
        return cls(*vector[:counts].tolist(), vector[counts:].view(classes, classes))

    def summary(self, objects: int = 1) -> dict[str, float]:
        """Mean loss, score loss and reconstruction parts, and accuracy in percent; for `objects` > 1
        labels per example, accuracy is of whole examples (all labels right) and at_least_one
        the percentage with at least one right."""
        n, count = max(self.examples, 1), max(self.counted, 1)
        summary = {"loss": self.loss / n, "score_loss": self.score_loss / n,
                   "reconstruction": self.reconstruction / n,
                   "accuracy": 100.0 * (1.0 - self.errors / count)}
        if objects > 1:
            summary["at_least_one"] = 100.0 * self.partly / count
        return summary

    def finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.loss, self.score_loss, self.reconstruction))


def accuracy_text(summary: dict[str, float]) -> str:
    """The accuracy of a Totals.summary() in words: "accuracy 99.10%", or for two labels per
    example "pair accuracy 94.80% (at least one right 99.90%)"."""
    if "at_least_one" in summary:
        return (f"pair accuracy {summary['accuracy']:.2f}% "
                f"(at least one right {summary['at_least_one']:.2f}%)")
    return f"accuracy {summary['accuracy']:.2f}%"
