"""The capsule's nonlinearity, squash (eq. 1), and the precision capsules are computed in."""
from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-8


def at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32, or in float64 when it is float64 (never in a half-precision type)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """v = |s|^2 / (1 + |s|^2) * s / |s|  (eq. 1), in float32 or wider; the eps keeps the
    gradient finite at s = 0."""
    s = at_least_float32(s)
    squared_norm = (s * s).sum(dim=dim, keepdim=True)
    # one scale per capsule, so that only one product touches every component
    return s * (squared_norm / ((1.0 + squared_norm) * torch.sqrt(squared_norm + EPS)))
