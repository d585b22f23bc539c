"""Routing by agreement: Sabour, Frosst & Hinton 2017, Procedure 1.

    b_ij <- 0;  r times:  c_i = softmax_j(b_i);  s_j = sum_i c_ij u_hat_j|i (+ bias_j);
                          v_j = squash(s_j);  b_ij <- b_ij + u_hat_j|i . v_j

`dynamic_routing` is the procedure as written, left to autograd: the reference form, and the one
to edit. `procedure_1` runs the same procedure (`Procedure1`) with its backward pass written by
hand; the network's layer, `DynamicRouting`, takes it when built with `fast_kernels`. Routing
reads the votes u_hat (B, classes, in_caps, dim), 94 MB at batch 128, once per product: three
sums s_j and two agreements forward. Left to autograd, the backward pass writes a rank-one
gradient of the votes for each of those five products and adds them up; here it is one product
over all the terms,
    dL/du_hat_j|i = sum_t c_ij^t dL/ds_j^t + sum_(t<r) dL/da_ij^t v_j^t,
and the agreements u_hat_j|i . x_j are read as x_j^T U_j^T, row by row (as U_j x_j they are
16-wide dot products, three times slower on a CPU). The derivatives of `squash` and `couple`
come from autograd on those functions themselves, so an edit to either keeps both forms equal.
Both forms give the same results to float64 rounding, gradients included (tests/test_routing.py),
and every run checks that they still do (capsnet.kernels). Why the votes keep this layout:
BENCHMARKS.md.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..squashing import at_least_float32, squash
from .routed import Routed, iterations_checked


def dynamic_routing(u_hat: Tensor, iterations: int, detach_inner: bool = False,
                    bias: Tensor | None = None, leaky: bool = False) -> tuple[Tensor, Tensor]:
    """Procedure 1, each example on its own: v_j (B, out_caps, out_dim) and the last iteration's
    c_ij (B, out_caps, in_caps) from u_hat (B, out_caps, in_caps, out_dim). With `detach_inner`,
    gradients flow only through the final iteration. With `leaky`, the softmax has one more
    output whose logit stays zero ("none of the above"): a primary capsule can route to no
    class, and its c_ij over the classes sum to less than 1. Routing runs in float32 (or
    float64) even under autocast: the logits, the coupling coefficients and the sums s_j never
    round to half precision."""
    with torch.autocast(u_hat.device.type, enabled=False):
        u_hat = at_least_float32(u_hat)
        batch, out_caps, in_caps, dim = u_hat.shape
        votes = u_hat.reshape(batch * out_caps, in_caps, dim)  # (B*out_caps, in_caps, out_dim)
        votes_inner = votes.detach() if detach_inner else votes
        logits = u_hat.new_zeros(batch, out_caps, in_caps)  # b_ij, zero for every example
        for iteration in range(iterations):
            coupling = couple(logits, leaky)  # c_ij: softmax over the output capsules
            last = iteration == iterations - 1
            s = weighted_sums(coupling, votes if last else votes_inner)  # s_j: (B, out_caps, dim)
            if bias is not None:
                s = s + bias
            v = squash(s)  # v_j: (B, out_caps, out_dim)
            if not last:
                agreement = torch.bmm(votes_inner, v.view(batch * out_caps, dim, 1))
                logits = logits + agreement.view(batch, out_caps, in_caps)  # + u_hat . v_j
        return v, coupling


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


def traced(function: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """function(x) with its graph, and the leaf x it starts from: its backward is autograd's
    on the function as written."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        return function(x), x


def pulled_back(y: Tensor, x: Tensor, grad_y: Tensor) -> Tensor:
    """dL/dx from dL/dy for y = f(x) as `traced` made it: the gradient of sum(y dL/dy), the
    same numbers (autograd.grad given dL/dy would first import sympy: 0.4 s)."""
    with torch.enable_grad():
        (grad_x,) = torch.autograd.grad((y * grad_y).sum(), x)
    return grad_x


def couple(logits: Tensor, leaky: bool) -> Tensor:
    """c_ij: the softmax of b_ij (B, out_caps, in_caps) over the output capsules; `leaky` adds
    an output whose logit stays zero, and drops it."""
    if not leaky:
        return logits.softmax(dim=1)
    return F.pad(logits, (0, 0, 0, 1)).softmax(dim=1)[:, :-1]


class Procedure1(torch.autograd.Function):
    """dynamic_routing's results, with the backward pass by hand."""

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
            kept += [logits, coupling, s, v]
            if iteration < iterations - 1:
                logits = logits + agreements(votes, v)  # b_ij += u_hat_j|i . v_j
        ctx.save_for_backward(u_hat, *kept)
        ctx.options = (iterations, detach_inner, bias is not None, leaky)
        return v, coupling

    @staticmethod
    def backward(ctx: Any, grad_v: Tensor, grad_coupling: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        u_hat, *kept = ctx.saved_tensors
        _, _, in_caps, dim = u_hat.shape
        votes = u_hat.view(-1, in_caps, dim)
        iterations, detach_inner, has_bias, leaky = ctx.options
        logits, couplings, sums, poses = kept[0::4], kept[1::4], kept[2::4], kept[3::4]
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
            grad_s = pulled_back(*traced(squash, sums[t]), grad_v)  # dL/ds_j
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
            coupled = traced(functools.partial(couple, leaky=leaky), logits[t])  # c^t again
            grad_b = pulled_back(*coupled, grad_c)  # dL/db^t
            grad_logits = grad_b if grad_logits is None else grad_logits + grad_b
        grad_votes = None
        if ctx.needs_input_grad[0]:
            count = votes.shape[0]  # every rank-one term in one product
            # the weights stacked as whole rows (count, terms, in_caps), read transposed:
            # interleaving them (count, in_caps, terms) copies 2x slower
            left = torch.stack(weights, dim=-2).view(count, len(weights), in_caps)
            right = torch.stack(grads, dim=-2).view(count, len(grads), dim)
            grad_votes = torch.bmm(left.transpose(1, 2), right).view_as(u_hat)
        return grad_votes, grad_bias, None, None, None


def procedure_1(u_hat: Tensor, iterations: int, detach_inner: bool = False,
                bias: Tensor | None = None, leaky: bool = False) -> tuple[Tensor, Tensor]:
    """dynamic_routing through Procedure1: the same arguments and results."""
    with torch.autocast(u_hat.device.type, enabled=False):
        u_hat = at_least_float32(u_hat).contiguous()
        bias = bias.to(u_hat.dtype) if bias is not None else None
        return Procedure1.apply(u_hat, bias, iterations, detach_inner, leaky)


class DynamicRouting(nn.Module):
    """Procedure 1 as a routing layer: r iterations, optionally leaky or with the inner
    iterations detached; with `fast_kernels`, through procedure_1 (but under torch.compile).
    The class scores are the lengths |v_j|."""
    FORMS = ("procedure_1", "dynamic_routing")  # (fast, as written): capsnet.kernels checks them

    def __init__(self, iterations: int = 3, detach_inner: bool = False, leaky: bool = False,
                 fast_kernels: bool = True) -> None:
        super().__init__()
        self.iterations = iterations_checked(iterations)
        self.detach_inner, self.leaky, self.fast_kernels = detach_inner, leaky, fast_kernels

    def forward(self, u_hat: Tensor, activations: Tensor, bias: Tensor | None = None) -> Routed:
        # compiled, the form as written: the compiler fuses its products itself, and cannot
        # trace a backward that asks autograd for squash's and couple's derivatives
        if self.fast_kernels and not torch.compiler.is_compiling():
            v, coupling = procedure_1(u_hat, self.iterations, self.detach_inner, bias, self.leaky)
        else:
            v, coupling = dynamic_routing(u_hat, self.iterations, self.detach_inner, bias,
                                          self.leaky)
        return Routed(v, torch.linalg.vector_norm(v, dim=-1), coupling)  # scores: |v_j|
