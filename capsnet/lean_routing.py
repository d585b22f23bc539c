"""Procedure 1 for training: model.dynamic_routing's arguments and results, its backward by hand.

Routing reads the votes u_hat (B, out_caps, in_caps, dim), 94 MB at batch 128, once per product:
three sums s_j and two agreements forward. Left to autograd, the backward pass writes a rank-one
gradient of the votes for each of those five products and adds them up (nine passes over 94 MB).
Here it is one product over all the terms,
    dL/du_hat_j|i = sum_t c_ij^t dL/ds_j^t + sum_(t<T) dL/da_ij^t v_j^t,
written once, and the agreements u_hat_j|i . x_j are read as x_j^T U_j^T, row by row (as U_j x_j
they are 16-wide dot products, three times slower on a CPU). The votes keep the layout the
reference form gives them: measured on a CPU, routing straight from the layout their product
makes (in_caps first) through strided or block-diagonal products was slower than the one copy
(docs/speed.md). Results equal model.dynamic_routing's to float64 rounding, gradients included
(tests/test_lean_routing.py). `install(model)` routes a CapsNet through here; the run builder does
(capsnet.networks), so that model.py stays the paper's layers.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import EPS, at_least_float32, squash


def weighted_sums(weights: Tensor, votes: Tensor) -> Tensor:
    """sum_i w_ij u_hat_j|i: weights (B, out_caps, in_caps), votes (B*out_caps, in_caps, dim)
    -> (B, out_caps, dim)."""
    batch, out_caps, in_caps = weights.shape
    sums = torch.bmm(weights.reshape(batch * out_caps, 1, in_caps), votes)
    return sums.view(batch, out_caps, -1)


def agreements(votes: Tensor, x: Tensor) -> Tensor:
    """u_hat_j|i . x_j: votes (B*out_caps, in_caps, dim), x (B, out_caps, dim)
    -> (B, out_caps, in_caps). As x_j^T U_j^T: the product that reads each row of U_j once,
    in order (U_j x_j reads them as 16-wide dot products, three times slower here)."""
    batch, out_caps, dim = x.shape
    rows = torch.bmm(x.reshape(batch * out_caps, 1, dim), votes.transpose(1, 2))
    return rows.view(batch, out_caps, -1)


def squash_backward(s: Tensor, grad_v: Tensor) -> Tensor:
    """dL/ds of v = q / (1 + q) * s / r, with q = |s|^2 and r = sqrt(q + eps) (model.squash):
    dL/ds = q / ((1 + q) r) dL/dv + 2 s (s . dL/dv) (1 / ((1 + q)^2 r) - q / (2 (1 + q) r^3))."""
    q = (s * s).sum(dim=-1, keepdim=True)
    r = torch.sqrt(q + EPS)
    slope = 1.0 / ((1.0 + q) ** 2 * r) - q / (2.0 * (1.0 + q) * r ** 3)
    return q / ((1.0 + q) * r) * grad_v + 2.0 * s * (s * grad_v).sum(dim=-1, keepdim=True) * slope


def couple(logits: Tensor, leaky: bool) -> Tensor:
    """c_ij: the softmax of b_ij (B, out_caps, in_caps) over the output capsules; `leaky` adds
    an output whose logit stays zero, and drops it."""
    if not leaky:
        return logits.softmax(dim=1)
    return F.pad(logits, (0, 0, 0, 1)).softmax(dim=1)[:, :-1]


class Routing(torch.autograd.Function):
    """Procedure 1 on u_hat (B, out_caps, in_caps, dim): v_j (B, out_caps, dim) and the last
    c_ij (B, out_caps, in_caps)."""

    @staticmethod
    def forward(ctx: Any, u_hat: Tensor, bias: Tensor | None, iterations: int,
                detach_inner: bool, leaky: bool) -> tuple[Tensor, Tensor]:
        batch, out_caps, in_caps, dim = u_hat.shape
        votes = u_hat.view(batch * out_caps, in_caps, dim)  # one (in_caps x dim) matrix per (b, j)
        logits = u_hat.new_zeros(batch, out_caps, in_caps)  # b_ij
        kept = []
        for iteration in range(iterations):
            coupling = couple(logits, leaky)
            s = weighted_sums(coupling, votes)  # s_j = sum_i c_ij u_hat_j|i: (B, out_caps, dim)
            if bias is not None:
                s = s + bias
            v = squash(s)
            kept += [coupling, s, v]
            if iteration < iterations - 1:
                logits = logits + agreements(votes, v)  # b_ij += u_hat_j|i . v_j
        ctx.save_for_backward(votes, *kept)
        ctx.options = (iterations, detach_inner, bias is not None)
        ctx.shape = u_hat.shape
        return v, coupling

    @staticmethod
    def backward(ctx: Any, grad_v: Tensor, grad_coupling: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        votes, *kept = ctx.saved_tensors
        iterations, detach_inner, has_bias = ctx.options
        couplings, sums, poses = kept[0::3], kept[1::3], kept[2::3]
        # The logits' gradient reaches the votes only without detach_inner, and the bias always.
        through_logits = not detach_inner or has_bias
        last = iterations - 1
        weights, grads = [], []  # dL/du_hat_j|i = sum over k of weights_k[j, i] grads_k[j]
        grad_bias = grad_logits = None  # grad_logits: dL/db_ij of the next iteration
        for t in reversed(range(0 if through_logits else last, iterations)):
            if t < last:  # b^(t+1) = b^t + a^t: dL/da^t is dL/db^(t+1)
                grad_v = weighted_sums(grad_logits, votes)  # dL/dv_j = sum_i dL/da_ij u_hat_j|i
                if not detach_inner:
                    weights.append(grad_logits)
                    grads.append(poses[t])
            grad_s = squash_backward(sums[t], grad_v)
            if has_bias:
                grad_bias = grad_s.sum(0) if grad_bias is None else grad_bias + grad_s.sum(0)
            if t == last or not detach_inner:
                weights.append(couplings[t])
                grads.append(grad_s)
            if t == 0 or not through_logits:
                continue  # c^0 is uniform, whatever the votes
            grad_c = agreements(votes, grad_s)  # dL/dc_ij = u_hat_j|i . dL/ds_j
            if t == last and grad_coupling is not None:
                grad_c = grad_c + grad_coupling
            c = couplings[t]  # the softmax's backward; a leaky one's extra output has no gradient
            grad_b = c * (grad_c - (c * grad_c).sum(dim=1, keepdim=True))
            grad_logits = grad_b if grad_logits is None else grad_logits + grad_b
        grad_votes = None
        if ctx.needs_input_grad[0]:
            count, in_caps, dim = votes.shape  # every rank-one term in one product
            left = torch.stack(weights, dim=-1).view(count, in_caps, len(weights))
            right = torch.stack(grads, dim=-2).view(count, len(grads), dim)
            grad_votes = torch.bmm(left, right).view(ctx.shape)
        return grad_votes, grad_bias, None, None, None


def dynamic_routing(u_hat: Tensor, iterations: int, detach_inner: bool = False,
                    bias: Tensor | None = None, leaky: bool = False) -> tuple[Tensor, Tensor]:
    """model.dynamic_routing, the same arguments and results, through Routing."""
    with torch.autocast(u_hat.device.type, enabled=False):
        u_hat = at_least_float32(u_hat).contiguous()
        bias = bias.to(u_hat.dtype) if bias is not None else None
        return Routing.apply(u_hat, bias, iterations, detach_inner, leaky)


def install(model: nn.Module) -> nn.Module:
    """`model` (a CapsNet) with its DigitCaps routed by this module: the same capsules up to
    float32 rounding, in less time."""
    model.digits.routing = dynamic_routing
    return model
