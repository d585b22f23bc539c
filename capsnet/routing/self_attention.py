"""Self-attention routing: Mazzia, Salvetti & Chiaberge, "Efficient-CapsNet: Capsule Network with
Self-Attention Routing" (2021), in this network's class capsules. No iterations:

    A_j = U_j U_j^T / sqrt(d)          the votes' agreement with each other, U_j (in_caps, d)
    c_ij = softmax_j(sum_k A_j[i, k])  over the classes
    s_j = sum_i (c_ij + b_ij) u_hat_j|i (+ bias_j);   v_j = squash(s_j)

with b_ij a learned prior per (class, input capsule), zero at first, added after the softmax as
the authors' code does. sum_k A_j[i, k] = u_hat_j|i . sum_k u_hat_j|k / sqrt(d): no
(in_caps x in_caps) matrix is made. The sum runs over every vote, the capsule's own included, as
in the authors' code. squash is this package's (eq. 1 of Sabour et al.), not Efficient-CapsNet's
(1 - 1/e^|s|) s/|s|, so that the comparison with dynamic routing changes the routing only
(docs/models.md).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..squashing import at_least_float32, squash
from .routed import Routed


class SelfAttentionRouting(nn.Module):
    def __init__(self, in_caps: int, classes: int) -> None:
        super().__init__()
        self.prior = nn.Parameter(torch.zeros(classes, in_caps))  # b_ij

    def forward(self, u_hat: Tensor, activations: Tensor, bias: Tensor | None = None) -> Routed:
        """u_hat (B, classes, in_caps, d)."""
        with torch.autocast(u_hat.device.type, enabled=False):
            u_hat = at_least_float32(u_hat)
            batch, classes, in_caps, dim = u_hat.shape
            votes = u_hat.reshape(batch * classes, in_caps, dim)
            total = u_hat.sum(dim=2).view(batch * classes, 1, dim)  # sum_k u_hat_j|k
            agreement = torch.bmm(total, votes.transpose(1, 2)) / math.sqrt(dim)
            coupling = agreement.view(batch, classes, in_caps).softmax(dim=1)  # over classes
            coupling = coupling + self.prior.to(u_hat.dtype)  # c_ij + b_ij: (B, classes, in_caps)
            s = torch.bmm(coupling.view(batch * classes, 1, in_caps), votes)
            s = s.view(batch, classes, dim)
            if bias is not None:
                s = s + bias.to(s.dtype)
            v = squash(s)
            return Routed(v, torch.linalg.vector_norm(v, dim=-1), coupling)  # scores: |v_j|
