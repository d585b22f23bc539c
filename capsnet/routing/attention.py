"""Inverted dot-product attention routing: Tsai, Srivastava, Goh & Salakhutdinov, "Capsules with
Inverted Dot-Product Attention Routing" (ICLR 2020), in this network's class capsules.

    v_j^0 = 0, so the first iteration couples uniformly: c_ij = 1 / classes; then, r times:
    v_j = LayerNorm(sum_i c_ij u_hat_j|i)   with its learned gain and bias, in place of squash
    a_ij = u_hat_j|i . v_j / sqrt(d)        agreement with the current pose, not accumulated
    c_ij = softmax_j(a_ij)                  over the class capsules
(the last iteration ends with its v_j.) The poses after layer normalisation have lengths near
sqrt(d), not probabilities: as the authors' code does, one linear layer shared by every class
maps a pose to a logit, and its sigmoid is the class score in [0, 1] that the losses and
predictions read. Its bias starts at logit(0.1), so that every score starts at the margin loss's
m- = 0.1, as the capsule lengths of the other routings start near 0 (docs/models.md).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..squashing import at_least_float32
from .routed import Routed, iterations_checked


def authors_weight_std(in_caps: int, in_dim: int, classes: int) -> float:
    """W_ij's initial N(0, std^2) in the authors' CapsuleFC: sqrt(classes / (in_dim in_caps))
    (0.033 on MNIST, where the other routings take 0.01)."""
    return math.sqrt(classes / (in_dim * in_caps))


class AttentionRouting(nn.Module):
    def __init__(self, dim: int = 16, iterations: int = 3) -> None:
        super().__init__()
        self.iterations = iterations_checked(iterations)
        self.norm = nn.LayerNorm(dim)  # its gain and bias, shared by the classes
        self.score = nn.Linear(dim, 1)  # pose -> logit, shared by the classes
        with torch.no_grad():
            self.score.bias.fill_(math.log(0.1 / 0.9))

    def forward(self, u_hat: Tensor, activations: Tensor, bias: Tensor | None = None) -> Routed:
        """u_hat (B, classes, in_caps, d)."""
        with torch.autocast(u_hat.device.type, enabled=False):
            u_hat = at_least_float32(u_hat)
            batch, classes, in_caps, dim = u_hat.shape
            votes = u_hat.reshape(batch * classes, in_caps, dim)

            def pose(coupling: Tensor) -> Tensor:  # LayerNorm(sum_i c_ij u_hat_j|i)
                s = torch.bmm(coupling.reshape(batch * classes, 1, in_caps), votes)
                return self.norm(s.view(batch, classes, dim))

            coupling = u_hat.new_full((batch, classes, in_caps), 1.0 / classes)
            v = pose(coupling)
            for _ in range(self.iterations - 1):
                agreement = torch.bmm(v.reshape(batch * classes, 1, dim),
                                      votes.transpose(1, 2)) / math.sqrt(dim)
                coupling = agreement.view(batch, classes, in_caps).softmax(dim=1)
                v = pose(coupling)
            logits = self.score(v).squeeze(-1)  # (B, classes)
            return Routed(v, torch.sigmoid(logits), coupling, logits)
