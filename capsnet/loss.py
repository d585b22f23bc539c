"""Margin loss (eq. 4) and the reconstruction regulariser."""
from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from .model import CapsNetOutput


def margin_loss(lengths: Tensor, labels: Tensor, m_plus: float = 0.9, m_minus: float = 0.1,
                lambda_: float = 0.5) -> Tensor:
    """Per-example margin loss summed over classes: (B, classes) lengths and (B,) labels, or
    (B, K) labels of K different classes present together -> (B,)."""
    present = F.one_hot(labels, lengths.shape[1]).to(lengths.dtype)  # T_k: (B, [K,] classes)
    if labels.dim() == 2:
        present = present.amax(dim=1)  # (B, classes): 1 for each class present
    loss = (present * F.relu(m_plus - lengths).pow(2)
            + lambda_ * (1.0 - present) * F.relu(lengths - m_minus).pow(2))
    return loss.sum(dim=1)


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
    margin: Tensor  # batch mean of the margin loss
    reconstruction: Tensor  # batch mean of the weighted reconstruction loss

    @property
    def total(self) -> Tensor:
        return self.margin + self.reconstruction


class CapsuleLoss(nn.Module):
    """Margin loss + reconstruction_weight x reconstruction SSE, averaged over the batch.

    With `class_mean` (the official code), the margin loss is halved and averaged over the
    classes instead of summed: 1/20 of the paper's for ten classes."""

    def __init__(self, m_plus: float = 0.9, m_minus: float = 0.1, lambda_: float = 0.5,
                 reconstruction_weight: float = 0.0005, class_mean: bool = False) -> None:
        super().__init__()
        self.m_plus, self.m_minus, self.lambda_ = m_plus, m_minus, lambda_
        self.reconstruction_weight, self.class_mean = reconstruction_weight, class_mean

    def parts(self, targets: Tensor, labels: Tensor, output: CapsNetOutput,
              weights: Tensor | None = None) -> LossParts:
        """`targets`: what the reconstructions are scored against (Sample.targets); `weights`
        (B,): which examples count (Sample.weights; None: all)."""
        margin = margin_loss(output.lengths, labels, self.m_plus, self.m_minus, self.lambda_)
        if self.class_mean:
            margin = 0.5 * margin / output.lengths.shape[1]
        sse = reconstruction_loss(targets, output.reconstructions)
        return LossParts(batch_mean(margin, weights),
                         self.reconstruction_weight * batch_mean(sse, weights))

    def forward(self, targets: Tensor, labels: Tensor, output: CapsNetOutput,
                weights: Tensor | None = None) -> Tensor:
        return self.parts(targets, labels, output, weights).total
