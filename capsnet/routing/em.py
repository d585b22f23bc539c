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
class poses are mu_j, the class scores a_j, the coupling the R_ij of the last M-step. beta_u
and beta_a are learned, one of each per class. The inverse temperature follows the authors'
schedule lambda_t = LAMBDA (1 - 0.95^t) for iterations t = 1..r.

What the paper leaves open, chosen here (docs/models.md says why): the cost measures sigma_j
against sigma (so it does not depend on the votes' scale), averages over the H entries instead
of summing, and weighs each class by its share of the mass relative to the mean class (the
paper's raw sum over 1,152 inputs saturates every a_j at once); eps is relative to sigma too;
beta_a starts where every a_j is 0.1, as capsule lengths start near the margin loss's m-.

`em_routing` is the procedure as written, left to autograd: the reference form, and the one to
edit. With `fast_kernels` the network's layer runs it through `EMProcedure` (`em_procedure`),
whose backward pass through the votes is written by hand (the same results to float64 rounding,
gradients included: tests/test_routing.py); under torch.compile it runs the reference form,
whose products the compiler fuses itself.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..squashing import at_least_float32
from .routed import Routed, iterations_checked

EPS = 1e-4  # the floor of (sigma_j / sigma)^2: a class fed one vote keeps a finite cost
# the floor of sigma^2: votes equal in a dimension (a blank image, dead capsules) leave its spread
# zero, and ln(sigma_j^2 / sigma^2) would be 0/0
SPREAD_FLOOR = 1e-8
LAMBDA = 20.0  # lambda_t = LAMBDA (1 - 0.95^t): 1.0, 1.95, 2.85 for three iterations
START = 0.1  # every a_j at the start, when the costs are near zero


def inverse_temperature(t: int) -> float:
    """lambda of iteration t = 1, 2, ..."""
    return LAMBDA * (1.0 - 0.95 ** t)


def centre_weights(activations: Tensor, classes: int) -> Tensor:
    """a_i / (classes sum_i a_i): the weight of each vote in sigma^h and its mean, (B, in_caps)."""
    total = classes * activations.sum(dim=1, keepdim=True)
    return activations / total.clamp_min(torch.finfo(activations.dtype).tiny)


def shares(assignment: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
    """R_ij a_i / sum_i R_ij a_i (B, classes, in_caps) and sum_i R_ij a_i (B, classes, 1)."""
    mass = assignment * activations[:, None]
    total = mass.sum(dim=2, keepdim=True)
    return mass / total.clamp_min(torch.finfo(mass.dtype).tiny), total


def m_step(moments: Tensor, spread: Tensor, total: Tensor, beta_u: Tensor, beta_a: Tensor,
           t: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From the moments [mu_j, sum_i share_ij x_ij^2] (B, classes, 2H) of the votes x less
    their mean: mu_j (B, classes, H), the logit of a_j (B, classes), and what the E-step reads:
    the coefficients [-2 mu_j / sigma_j^2, 1 / sigma_j^2] (B, classes, 2H) of [x, x^2] and the
    rest of -2 ln p_ij, sum_h mu_j^2 / sigma_j^2 + ln sigma_j^2 (B, classes, 1)."""
    mu, second = moments.chunk(2, dim=-1)
    variance = (second - mu * mu).clamp_min(0) + EPS * spread  # (sigma_j^h)^2
    log_ratio = 0.5 * torch.log(variance / spread)  # ln(sigma_j^h / sigma^h)
    relative = total.squeeze(2) / total.mean(dim=1)  # each class's mass over the mean class's
    cost = (beta_u + log_ratio.mean(dim=2)) * relative
    logit = inverse_temperature(t) * (beta_a - cost)
    precision = 1.0 / variance
    coefficients = torch.cat([-2 * mu * precision, precision], dim=-1)
    rest = (mu * mu * precision + torch.log(variance)).sum(dim=2, keepdim=True)
    return mu, logit, coefficients, rest


def e_step(squared: Tensor, logit: Tensor, rest: Tensor) -> Tensor:
    """R_ij = a_j p_ij / sum_k a_k p_ik (B, classes, in_caps), from the E-step's products
    [x, x^2] . coefficients (B, classes, in_caps); the constant of ln p_ij cancels."""
    return (F.logsigmoid(logit)[..., None] - 0.5 * (squared + rest)).softmax(dim=1)


def moments_of(votes: Tensor, activations: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[x, x^2] (B, classes, in_caps, 2H) for the votes less their a-weighted mean over every
    class (B, H), and sigma^2, the mean of x^2 (B, 1, H). Centred, the moments are free of
    cancellation."""
    weight = centre_weights(activations, votes.shape[1])
    centre = torch.einsum("bi,bjih->bh", weight, votes)
    x = votes - centre[:, None, None]
    powers = torch.cat([x, x * x], dim=-1)
    spread = torch.einsum("bi,bjih->bh", weight, powers[..., votes.shape[-1]:])[:, None]
    return powers, centre, spread.clamp_min(SPREAD_FLOOR)


def em_routing(votes: Tensor, activations: Tensor, beta_u: Tensor, beta_a: Tensor,
               iterations: int) -> Routed:
    """The procedure as written, left to autograd: the reference form. votes (B, classes,
    in_caps, H), activations (B, in_caps), beta_u and beta_a (classes,)."""
    powers, centre, spread = moments_of(votes, activations)
    assignment = votes.new_full(votes.shape[:3], 1.0 / votes.shape[1])  # R_ij
    for t in range(1, iterations + 1):
        share, total = shares(assignment, activations)
        moments = torch.einsum("bji,bjik->bjk", share, powers)
        mu, logit, coefficients, rest = m_step(moments, spread, total, beta_u, beta_a, t)
        if t < iterations:
            squared = torch.einsum("bjik,bjk->bji", powers, coefficients)
            assignment = e_step(squared, logit, rest)
    return Routed(mu + centre[:, None], torch.sigmoid(logit), assignment)


class EMProcedure(torch.autograd.Function):
    """em_routing's results, with the backward pass through the votes by hand.

    The votes' powers P = [x, x^2] (B, classes, in_caps, 2H), twice the size of the votes, are
    read once per product: the M-step's moments share . P and the E-step's P . coefficients.
    Left to autograd, each product's backward writes a rank-one gradient of P and adds them up;
    here dL/dP = sum_t share^t (x) dL/dmoments^t + sum_t dL/dsquared^t (x) coefficients^t
    (+ the spread's term) is one product over all the terms. The steps between the products,
    on tensors without the votes' dimension, go back through autograd, one step at a time."""

    @staticmethod
    def forward(ctx: Any, votes: Tensor, activations: Tensor, beta_u: Tensor, beta_a: Tensor,
                iterations: int) -> tuple[Tensor, Tensor, Tensor]:
        batch, classes, in_caps, dim = votes.shape
        powers, centre, spread = moments_of(votes, activations)
        rows = powers.view(batch * classes, in_caps, 2 * dim)
        assignment = votes.new_full((batch, classes, in_caps), 1.0 / classes)
        kept = []  # per iteration: R_ij, the moments, and before an E-step its inputs
        for t in range(1, iterations + 1):
            share, total = shares(assignment, activations)
            moments = torch.bmm(share.view(-1, 1, in_caps), rows).view(batch, classes, -1)
            mu, logit, coefficients, rest = m_step(moments, spread, total, beta_u, beta_a, t)
            kept += [assignment, moments]
            if t < iterations:
                squared = torch.bmm(coefficients.view(-1, 1, 2 * dim), rows.transpose(1, 2))
                squared = squared.view(batch, classes, in_caps)
                kept += [squared, logit, coefficients, rest]
                assignment = e_step(squared, logit, rest)
        ctx.save_for_backward(powers, centre, spread, activations, beta_u, beta_a, *kept)
        ctx.iterations = iterations
        return mu + centre[:, None], torch.sigmoid(logit), assignment

    @staticmethod
    def backward(ctx: Any, grad_poses: Tensor, grad_scores: Tensor, grad_coupling: Tensor
                 ) -> tuple[Tensor | None, ...]:
        powers, centre, spread, activations, beta_u, beta_a, *kept = ctx.saved_tensors
        iterations = ctx.iterations
        batch, classes, in_caps, width = powers.shape
        dim = width // 2
        rows = powers.view(batch * classes, in_caps, width)
        steps = [kept[6 * k:6 * k + 6] for k in range(iterations)]  # the last has two
        leaves = [t.detach().requires_grad_() for t in (spread, activations, beta_u, beta_a)]
        grads = [torch.zeros_like(t) for t in leaves]  # dL/d(spread, a_i, beta_u, beta_a)
        left, right = [], []  # dL/dP = sum over k of left_k[b, j, i] right_k[b, j]
        outputs_grads = (grad_poses, grad_scores)  # dL/d(mu, a_j) of the last M-step
        with torch.enable_grad():
            for t in range(iterations, 0, -1):
                assignment, moments = steps[t - 1][:2]
                assignment = assignment.detach().requires_grad_(t > 1)
                moments = moments.detach().requires_grad_()
                share, total = shares(assignment, leaves[1])
                mu, logit, coefficients, rest = m_step(moments, leaves[0], total, *leaves[2:], t)
                if t == iterations:
                    outputs = [mu, torch.sigmoid(logit)]
                else:
                    outputs = [logit, coefficients, rest]
                (grad_moments,) = torch.autograd.grad(outputs, [moments], outputs_grads,
                                                      retain_graph=True)
                # dL/dshare_ij = P_ij . dL/dmoments_j
                grad_share = torch.bmm(grad_moments.reshape(-1, 1, width), rows.transpose(1, 2))
                left.append(share.detach())
                right.append(grad_moments)
                inputs = leaves + ([assignment] if t > 1 else [])
                found = torch.autograd.grad(
                    outputs + [share], inputs,
                    list(outputs_grads) + [grad_share.view(batch, classes, in_caps)],
                    allow_unused=True)
                grads = [g if f is None else g + f for g, f in zip(grads, found)]
                if t == 1:
                    break
                grad_assignment = found[-1]
                if t == iterations:
                    grad_assignment = grad_assignment + grad_coupling
                # the E-step of iteration t - 1 made this R_ij
                squared, logit, coefficients, rest = steps[t - 2][2:]
                squared, logit, rest = (x.detach().requires_grad_() for x in (squared, logit, rest))
                grad_squared, grad_logit, grad_rest = torch.autograd.grad(
                    [e_step(squared, logit, rest)], [squared, logit, rest], [grad_assignment])
                left.append(grad_squared)
                right.append(coefficients)
                # dL/dcoefficients_j = sum_i dL/dsquared_ij P_ij
                grad_coefficients = torch.bmm(grad_squared.view(-1, 1, in_caps), rows)
                outputs_grads = (grad_logit, grad_coefficients.view(batch, classes, width),
                                 grad_rest)
            weight = centre_weights(leaves[1], classes)
        # sigma^2 = sum_j sum_i w_i x^2: its term of dL/dP, and then the centre's
        grad_spread = grads[0].expand(batch, classes, dim)
        left.append(weight.detach()[:, None].expand(batch, classes, in_caps))
        right.append(torch.cat([torch.zeros_like(grad_spread), grad_spread], dim=-1))
        grad_powers = torch.bmm(torch.stack(left, dim=-1).view(-1, in_caps, len(left)),
                                torch.stack(right, dim=-2).view(-1, len(right), width))
        grad_powers = grad_powers.view(batch, classes, in_caps, width)
        x = powers[..., :dim]
        grad_x = grad_powers[..., :dim] + 2 * x * grad_powers[..., dim:]  # through x and x^2
        # x = votes - centre, centre = sum_j sum_i w_i votes_ij; poses = mu + centre
        grad_centre = grad_poses.sum(dim=1) - grad_x.sum(dim=(1, 2))  # (B, H)
        grad_votes = grad_x + weight.detach()[:, None, :, None] * grad_centre[:, None, None]
        # dL/dw_i = sum_j (votes_ij . dL/dcentre + x_ij^2 . dL/dsigma^2)
        ends = torch.cat([grad_centre, grads[0].view(batch, dim)], dim=-1)  # (B, 2H)
        grad_weight = torch.bmm(powers.view(batch, classes * in_caps, width),
                                ends.unsqueeze(-1)).view(batch, classes, in_caps).sum(dim=1)
        grad_weight = grad_weight + classes * (centre * grad_centre).sum(dim=1, keepdim=True)
        with torch.enable_grad():
            (grad_from_weight,) = torch.autograd.grad([weight], [leaves[1]], [grad_weight])
        return (grad_votes, grads[1] + grad_from_weight, grads[2], grads[3], None)


def em_procedure(votes: Tensor, activations: Tensor, beta_u: Tensor, beta_a: Tensor,
                 iterations: int) -> Routed:
    """em_routing through EMProcedure: the same arguments and results."""
    return Routed(*EMProcedure.apply(votes.contiguous(), activations, beta_u, beta_a,
                                     iterations))


class EMRouting(nn.Module):
    FORMS = ("em_procedure", "em_routing")  # (fast, as written): capsnet.kernels checks them

    def __init__(self, classes: int, iterations: int = 3, fast_kernels: bool = True) -> None:
        super().__init__()
        self.iterations, self.fast_kernels = iterations_checked(iterations), fast_kernels
        self.beta_u = nn.Parameter(torch.zeros(classes))
        self.beta_a = nn.Parameter(torch.full(
            (classes,), math.log(START / (1 - START)) / inverse_temperature(iterations)))

    def forward(self, u_hat: Tensor, activations: Tensor, bias: Tensor | None = None) -> Routed:
        """u_hat (B, classes, in_caps, H) the votes V_ij, activations (B, in_caps) the a_i."""
        with torch.autocast(u_hat.device.type, enabled=False):
            votes, a_in = at_least_float32(u_hat), at_least_float32(activations)
            beta_u, beta_a = self.beta_u.to(votes.dtype), self.beta_a.to(votes.dtype)
            # compiled, the reference form: the compiler fuses its products itself
            if self.fast_kernels and not torch.compiler.is_compiling():
                return em_procedure(votes, a_in, beta_u, beta_a, self.iterations)
            return em_routing(votes, a_in, beta_u, beta_a, self.iterations)
