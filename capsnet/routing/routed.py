"""What every routing returns, and the check every iterated routing makes of its iterations."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Routed(NamedTuple):
    poses: Tensor  # (B, classes, dim): the class capsules v_j
    scores: Tensor  # (B, classes) in [0, 1]: the probability that each class is present
    coupling: Tensor  # (B, classes, in_caps): how much of each primary capsule went to a class
    # (B, classes): the logits whose sigmoid the scores are, from a routing that scores its
    # poses by a learned layer (attention; --score-loss cross-entropy reads them), else None
    logits: Tensor | None = None


def paper_weight_std(in_caps: int, in_dim: int, classes: int) -> float:
    """W_ij's initial N(0, std^2): 0.01 (the paper gives none; this package's since its start)."""
    return 0.01


def iterations_checked(iterations: int) -> int:
    if iterations < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iterations}")
    return iterations
