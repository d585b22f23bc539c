"""The paper's CNN baseline (Section 5), and the one of the authors' released code.

paper: three 5x5 stride-1 convolutions of 256, 256 and 128 channels, each with ReLU, padded to keep
    the image size (the padding the paper leaves open; "same" gives its 35.4M parameters on 28x28,
    "valid" only 13.3M); two fully connected layers of 328 and 192 units with ReLU; dropout; the
    logits. 35,445,522 parameters on 28x28.
official: two 5x5 "same" convolutions of 512 and 256 channels, each with ReLU and 2x2 max pooling;
    a fully connected layer of 1024 units with ReLU; the logits; no dropout.

One label per image: softmax with cross-entropy. Two (MultiMNIST): a sigmoid per class with a
binary cross-entropy on both labels, the two largest outputs predicted. The class scores are
returned as `scores` (softmax or sigmoid probabilities), as CapsNet's, so the meters, the ensemble
and --eval treat them alike.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .loss import LossParts, batch_mean

WIDTHS = {"paper": ((256, 256, 128), (328, 192)), "official": ((512, 256), (1024,))}


class BaselineOutput(NamedTuple):
    scores: Tensor  # (B, classes): class probabilities (softmax; sigmoid for two labels)
    logits: Tensor  # (B, classes)
    reconstructions: None = None  # no decoder
    coupling: None = None  # no routing


def widths(text: str, what: str) -> tuple[int, ...]:
    """'256,256,128' -> (256, 256, 128); ValueError for anything but positive integers."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be positive integers separated by commas, got {text!r}")
    return values


class Baseline(nn.Module):
    """Convolutions (5x5, "same") -> fully connected layers -> logits."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 recipe: str = "paper", channels: tuple[int, ...] = (), hidden: tuple[int, ...] = (),
                 dropout: float = 0.5, objects: int = 1) -> None:
        super().__init__()
        if recipe not in WIDTHS:
            raise ValueError(f"recipe must be one of {tuple(WIDTHS)}, got {recipe!r}")
        channels, hidden = channels or WIDTHS[recipe][0], hidden or WIDTHS[recipe][1]
        pool = recipe == "official"
        layers: list[nn.Module] = []
        size = image_size
        for before, after in zip((in_channels, *channels), channels):
            layers += [nn.Conv2d(before, after, kernel_size=5, padding=2), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # "same" pooling
                size = -(-size // 2)
        self.features = nn.Sequential(*layers)
        dense: list[nn.Module] = [nn.Flatten()]
        for before, after in zip((channels[-1] * size * size, *hidden), hidden):
            dense += [nn.Linear(before, after), nn.ReLU(inplace=True)]
        if dropout and not pool:
            dense.append(nn.Dropout(dropout))
        dense.append(nn.Linear(hidden[-1], num_classes))
        self.classifier = nn.Sequential(*dense)
        self.objects = objects

    def forward(self, images: Tensor, labels: Tensor | None = None,
                objects: int = 1) -> BaselineOutput:
        """`labels` and `objects` as CapsNet's (no decoder to mask): the scores of (B, C, H, W)."""
        logits = self.classifier(self.features(images)).float()  # (B, classes)
        scores = torch.sigmoid(logits) if self.objects > 1 else logits.softmax(dim=1)
        return BaselineOutput(scores, logits)


class BaselineLoss(nn.Module):
    """Cross-entropy of the softmax for one label; for two, the binary cross-entropy of each
    class's sigmoid against the two labels, summed over classes. Reported as the `score_loss`
    part (the classification loss); the reconstruction part is 0."""

    def parts(self, targets: Tensor, labels: Tensor, output: BaselineOutput,
              weights: Tensor | None = None) -> LossParts:
        logits = output.logits
        if labels.dim() == 1:
            loss = F.cross_entropy(logits, labels, reduction="none")
        else:
            present = F.one_hot(labels, logits.shape[1]).amax(dim=1).to(logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, present, reduction="none").sum(1)
        classification = batch_mean(loss, weights)
        return LossParts(classification, torch.zeros_like(classification))

    def forward(self, targets: Tensor, labels: Tensor, output: BaselineOutput,
                weights: Tensor | None = None) -> Tensor:
        return self.parts(targets, labels, output, weights).total
