"""No routing, the control: every primary capsule sends its vote to every class with the same
weight, and nothing is iterated.

    c_ij = 1 / classes;   s_j = sum_i c_ij u_hat_j|i (+ bias_j);   v_j = squash(s_j)

This is what one iteration of dynamic routing computes (its logits start at zero); as its own
entry, tables say what it is.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..squashing import at_least_float32, squash
from .routed import Routed


class UniformRouting(nn.Module):
    def forward(self, u_hat: Tensor, activations: Tensor, bias: Tensor | None = None) -> Routed:
        """u_hat (B, classes, in_caps, d)."""
        with torch.autocast(u_hat.device.type, enabled=False):
            u_hat = at_least_float32(u_hat)
            batch, classes, in_caps, _ = u_hat.shape
            s = u_hat.sum(dim=2) / classes  # (B, classes, d)
            if bias is not None:
                s = s + bias.to(s.dtype)
            coupling = u_hat.new_full((batch, classes, in_caps), 1.0 / classes)
            v = squash(s)
            return Routed(v, torch.linalg.vector_norm(v, dim=-1), coupling)  # scores: |v_j|
