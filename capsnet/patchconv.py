"""A convolution as one matrix product over image patches, used for PrimaryCaps on the CPU.

oneDNN runs the backward pass of the 9x9, stride-2 PrimaryCaps convolution at about half the
speed of its forward pass on the CPU; as patches @ weight, all three products (output, weight
gradient, input gradient) are plain GEMMs and a training step is about 15% faster. The result
is the same convolution (see tests/test_patchconv.py).
"""
from __future__ import annotations

import torch
from torch import Tensor


def patches(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Every kernel window of channels-last x: (B, H, W, C) -> (B, OH, OW, k, k, C), a view."""
    batch, height, width, channels = x.shape
    rows, cols = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    sb, sh, sw, sc = x.stride()
    return x.as_strided((batch, rows, cols, kernel, kernel, channels),
                        (sb, stride * sh, stride * sw, sh, sw, sc))


class PatchConv2d(torch.autograd.Function):
    """conv2d of channels-last input; returns channels-last output (B, OH, OW, out_channels)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, stride: int) -> Tensor:
        out_channels, in_channels, kernel, _ = weight.shape
        windows = patches(x.contiguous(), kernel, stride)  # (B, OH, OW, k, k, C)
        batch, rows, cols = windows.shape[:3]
        columns = windows.reshape(batch * rows * cols, -1)  # (B*OH*OW, k*k*C)
        matrix = weight.permute(0, 2, 3, 1).reshape(out_channels, -1)  # (O, k*k*C)
        ctx.save_for_backward(columns, matrix)
        ctx.geometry = (x.shape, kernel, stride, rows, cols)
        return torch.addmm(bias, columns, matrix.t()).view(batch, rows, cols, out_channels)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor, None]:
        columns, matrix = ctx.saved_tensors
        shape, kernel, stride, rows, cols = ctx.geometry
        grad = grad.reshape(-1, matrix.shape[0])  # (B*OH*OW, O)
        grad_weight = (grad.t() @ columns).view(-1, kernel, kernel, shape[3]).permute(0, 3, 1, 2)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_windows = (grad @ matrix).view(shape[0], rows, cols, kernel, kernel, shape[3])
            grad_x = grad.new_zeros(shape)  # (B, H, W, C): each window adds back where it came from
            span_r, span_c = stride * (rows - 1) + 1, stride * (cols - 1) + 1
            for ky in range(kernel):
                for kx in range(kernel):
                    grad_x[:, ky:ky + span_r:stride, kx:kx + span_c:stride] += grad_windows[:, :, :, ky, kx]
        return grad_x, grad_weight, grad.sum(dim=0), None
