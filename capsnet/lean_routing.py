"""DigitCaps for training: the votes written once, Procedure 1 over them, and its backward by hand.

The reference form (capsnet.model: DigitCapsules, dynamic_routing) makes the votes
u_hat_j|i = W_ij u_i with one product per input capsule, copies them into the layout (B, out_caps,
in_caps, dim) and leaves the backward pass to autograd, which writes a rank-one gradient of the
votes for every routing product and adds them up: six passes over a 94 MB tensor at batch 128.
Here, the votes are written once, straight from their product, laid out (B, in_caps, out_caps*dim).
Every routing pass over them is one batched matrix product per example that reads them in that
order: the sums s_j take the coupling coefficients as a (out_caps x in_caps) matrix and keep the
diagonal blocks; the agreements take v_j as a block-diagonal (out_caps*dim x out_caps) matrix.
The backward pass makes the votes' gradient in one product,
    dL/du_hat_j|i = sum_t c_ij^t dL/ds_j^t + sum_t<T dL/da_ij^t v_j^t,
and needs no copy of the votes either. Results equal the reference form's to float32 rounding,
gradients included (tests/test_lean_routing.py). `install(model)` swaps this into a CapsNet; the
run builder does (capsnet.networks), so that model.py stays the paper's layers.
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
