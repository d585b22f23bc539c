"""The losses on the class scores (`--score-loss`: the margin loss, eq. 4, Matrix capsules'
spread loss, or the cross-entropy on a routing's logits) and the reconstruction regulariser."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import CapsNetOutput

SCORE_LOSSES = ("margin", "spread", "cross-entropy")
SPREAD_MARGIN = (0.2, 0.9)  # the spread loss's m, from the first step to the last


def present_classes(labels: Tensor, classes: int, dtype: torch.dtype) -> Tensor:
    """(B,) labels, or (B, K) labels of K classes present together -> (B, classes): 1 for each
    class present."""
    present = F.one_hot(labels, classes).to(dtype)  # T_k: (B, [K,] classes)
    return present.amax(dim=1) if labels.dim() == 2 else present


def margin_loss(lengths: Tensor, labels: Tensor, m_plus: float = 0.9, m_minus: float = 0.1,
                lambda_: float = 0.5) -> Tensor:
    """Per-example margin loss summed over classes: (B, classes) lengths and (B,) labels, or
    (B, K) labels of K different classes present together -> (B,)."""
    present = present_classes(labels, lengths.shape[1], lengths.dtype)
    loss = (present * F.relu(m_plus - lengths).pow(2)
            + lambda_ * (1.0 - present) * F.relu(lengths - m_minus).pow(2))
    return loss.sum(dim=1)


def spread_loss(scores: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Per-example spread loss of Hinton, Sabour & Frosst 2018 (eq. 3), (B, classes) scores and
    (B,) labels -> (B,): L = sum_{i != t} max(0, m - (a_t - a_i))^2; with K classes present,
    every present t against every absent i."""
    present = present_classes(labels, scores.shape[1], scores.dtype)
    pairs = present.unsqueeze(2) * (1.0 - present).unsqueeze(1)  # (B, t, i)
    gap = scores.unsqueeze(2) - scores.unsqueeze(1)  # a_t - a_i
    return (pairs * F.relu(margin - gap).pow(2)).sum(dim=(1, 2))


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example cross-entropy of softmax(logits), (B, classes) logits and (B,) labels -> (B,):
    -log p_t; with K classes present, -sum_t log p_t over the present t."""
    present = present_classes(labels, logits.shape[1], logits.dtype)
    return -(present * F.log_softmax(logits, dim=1)).sum(dim=1)


def spread_margin(progress: float) -> float:
    """The spread loss's m after `progress` (0 to 1) of the run: linear from 0.2 to 0.9."""
    first, last = SPREAD_MARGIN
    return first + (last - first) * min(max(progress, 0.0), 1.0)


def reconstruction_loss(images: Tensor, reconstructions: Tensor) -> Tensor:
    """Per-example sum of squared errors: (B, C, H, W) -> (B,); for K digits per example, each
    reconstruction against its own digit's image, (B, K, C, H, W) -> (B,), the K terms added."""
    return (reconstructions - images).pow(2).flatten(1).sum(dim=1)


def batch_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """The mean of per-example values (B,) over the examples of weight 1 (all, without weights):
    the filling of a pass's last batch (weight 0) takes no part, and nothing waits for the
    device."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


class LossParts(NamedTuple):
    score_loss: Tensor  # batch mean of the loss on the class scores (margin, spread, cross-entropy)
    reconstruction: Tensor  # batch mean of the weighted reconstruction loss

    @property
    def total(self) -> Tensor:
        return self.score_loss + self.reconstruction


class CapsuleLoss(nn.Module):
    """Margin loss + reconstruction_weight x reconstruction SSE, averaged over the batch.

    With `class_mean` (the official code), the margin loss is halved and averaged over the
    classes instead of summed: 1/20 of the paper's for ten classes. With `spread`, a function
    giving the run's progress (0 to 1), the spread loss with its margin at that progress takes
    the margin loss's place; with `logits`, the cross-entropy on CapsNetOutput.logits does."""

    def __init__(self, m_plus: float = 0.9, m_minus: float = 0.1, lambda_: float = 0.5,
                 reconstruction_weight: float = 0.0005, class_mean: bool = False,
                 spread: Callable[[], float] | None = None, logits: bool = False) -> None:
        super().__init__()
        self.m_plus, self.m_minus, self.lambda_ = m_plus, m_minus, lambda_
        self.reconstruction_weight, self.class_mean = reconstruction_weight, class_mean
        self.spread, self.logits = spread, logits

    def parts(self, targets: Tensor, labels: Tensor, output: CapsNetOutput,
              weights: Tensor | None = None) -> LossParts:
        """`targets`: what the reconstructions are scored against (Sample.targets); `weights`
        (B,): which examples count (Sample.weights; None: all)."""
        if self.logits:
            if output.logits is None:
                raise ValueError("the cross-entropy needs a routing that gives class logits")
            margin = cross_entropy(output.logits, labels)
        elif self.spread is not None:
            margin = spread_loss(output.scores, labels, spread_margin(self.spread()))
        else:
            margin = margin_loss(output.scores, labels, self.m_plus, self.m_minus, self.lambda_)
            if self.class_mean:
                margin = 0.5 * margin / output.scores.shape[1]
        sse = reconstruction_loss(targets, output.reconstructions)
        return LossParts(batch_mean(margin, weights),
                         self.reconstruction_weight * batch_mean(sse, weights))

    def forward(self, targets: Tensor, labels: Tensor, output: CapsNetOutput,
                weights: Tensor | None = None) -> Tensor:
        return self.parts(targets, labels, output, weights).total
