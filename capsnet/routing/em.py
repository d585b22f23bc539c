"""EM routing: Hinton, Sabour & Frosst, "Matrix capsules with EM routing" (ICLR 2018), Procedure 1,
in this network's class capsules. The votes V_ij = W_ij u_i, as the network makes them, are the
pose matrices (4x4 for 16 dimensions), each of their H entries a dimension h; the input
activations a_i are the primary capsules' lengths. R_ij = 1 / classes, then r times:

    M-step, per class j:   R_ij <- R_ij a_i
        mu_j^h = sum_i R_ij V_ij^h / sum_i R_ij
        (sigma_j^h)^2 = sum_i R_ij (V_ij^h - mu_j^h)^2 / sum_i R_ij + eps (sigma^h)^2
        cost_j = (beta_u + mean_h ln(sigma_j^h / sigma^h)) sum_i R_ij / mean_k sum_i R_ik
        a_j = logistic(lambda (beta_a - cost_j))
    E-step, per input i (not after the last M-step):
        p_ij = prod_h N(V_ij^h; mu_j^h, (sigma_j^h)^2);   R_ij = a_j p_ij / sum_k a_k p_ik

with (sigma^h)^2 = sum_j sum_i a_i (V_ij^h - mean^h)^2 / (classes sum_i a_i) the spread of all
the votes, each weighted by its a_i: the Gaussian of one capsule that explained every vote. The
class poses are mu_j, the class scores a_j, the coupling the R_ij of the last M-step. beta_u and beta_a are learned, one of each per class. The inverse temperature follows
the authors' schedule lambda_t = LAMBDA (1 - 0.95^t) for iterations t = 1..r.

What the paper leaves open, chosen here (docs/models.md says why): the cost measures sigma_j
against sigma (so it does not depend on the votes' scale), averages over the H entries instead
of summing, and weighs each class by its share of the mass relative to the mean class (the
paper's raw sum over 1,152 inputs saturates every a_j at once); eps is relative to sigma too;
beta_a starts where every a_j is 0.1, as capsule lengths start near the margin loss's m-.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..squashing import at_least_float32
from .routed import Routed, iterations_checked

EPS = 1e-4  # the floor of (sigma_j / sigma)^2: a class fed one vote keeps a finite cost
LAMBDA = 20.0  # lambda_t = LAMBDA (1 - 0.95^t): 1.0, 1.95, 2.85 for three iterations
START = 0.1  # every a_j at the start, when the costs are near zero


def inverse_temperature(t: int) -> float:
    """lambda of iteration t = 1, 2, ..."""
    return LAMBDA * (1.0 - 0.95 ** t)


class EMRouting(nn.Module):
    def __init__(self, in_caps: int, classes: int, dim: int = 16, iterations: int = 3,
                 detach_inner: bool = False, leaky: bool = False) -> None:
        super().__init__()
        self.iterations = iterations_checked(iterations)
        self.beta_u = nn.Parameter(torch.zeros(classes))
        self.beta_a = nn.Parameter(torch.full(
            (classes,), math.log(START / (1 - START)) / inverse_temperature(iterations)))

    def forward(self, u_hat: Tensor, activations: Tensor, bias: Tensor | None = None) -> Routed:
        """u_hat (B, classes, in_caps, H) the votes V_ij, activations (B, in_caps) the a_i."""
        with torch.autocast(u_hat.device.type, enabled=False):
            votes = at_least_float32(u_hat)
            a_in = at_least_float32(activations)
            batch, classes, in_caps, dim = votes.shape
            tiny = torch.finfo(votes.dtype).tiny
            # The votes less their a-weighted mean over every class: the moments below are
            # then free of cancellation, and sigma^2 is their mean square.
            weight = a_in / (classes * a_in.sum(dim=1, keepdim=True)).clamp_min(tiny)
            centre = torch.einsum("bi,bjih->bh", weight, votes)  # (B, H)
            x = votes - centre[:, None, None]  # (B, classes, in_caps, H)
            x2 = x * x
            spread = torch.einsum("bi,bjih->bh", weight, x2)[:, None]  # sigma^2: (B, 1, H)
            beta_u, beta_a = self.beta_u.to(x.dtype), self.beta_a.to(x.dtype)
            assignment = x.new_full((batch, classes, in_caps), 1.0 / classes)  # R_ij
            for t in range(1, self.iterations + 1):
                mass = assignment * a_in[:, None]  # R_ij a_i: (B, classes, in_caps)
                total = mass.sum(dim=2, keepdim=True)  # sum_i R_ij a_i: (B, classes, 1)
                share = mass / total.clamp_min(tiny)
                mu = torch.einsum("bji,bjih->bjh", share, x)  # (B, classes, H)
                second = torch.einsum("bji,bjih->bjh", share, x2)
                variance = (second - mu * mu).clamp_min(0) + EPS * spread  # (sigma_j^h)^2
                log_ratio = 0.5 * torch.log(variance / spread)  # ln(sigma_j^h / sigma^h)
                relative = total.squeeze(2) / total.mean(dim=1)  # (B, classes)
                cost = (beta_u + log_ratio.mean(dim=2)) * relative
                logit = inverse_temperature(t) * (beta_a - cost)  # (B, classes)
                if t < self.iterations:  # E-step: ln a_j + ln p_ij, constants dropped
                    precision = 1.0 / variance
                    squared = (torch.einsum("bjih,bjh->bji", x2, precision)
                               - 2 * torch.einsum("bjih,bjh->bji", x, mu * precision)
                               + (mu * mu * precision).sum(dim=2, keepdim=True))
                    log_p = -0.5 * squared - 0.5 * torch.log(variance).sum(dim=2, keepdim=True)
                    assignment = (nn.functional.logsigmoid(logit)[..., None] + log_p).softmax(1)
            poses = mu + centre[:, None]
            return Routed(poses, torch.sigmoid(logit), assignment)
