"""Conv1 and the PrimaryCaps convolution on the CPU, with the PrimaryCaps layer done over
discrete Fourier transforms.

The PrimaryCaps layer (9x9 kernel, stride 2, 256 -> 256 channels) does 95% of CapsNet's
arithmetic. Its stride-2 convolution splits by phase (even or odd rows, even or odd columns) into
four stride-1 convolutions of 10x10 maps with 5x5 kernels. Over a 10x10 discrete Fourier
transform, each of those becomes one product per frequency, and one matrix product per frequency
contracts all four phases and 256 channels at once, for the 52 frequencies of half the spectrum of
a real 10x10 map. That costs under a third of the multiply-adds of the direct convolution. Every
transform here is a product with a small constant matrix; the products per frequency and the
transforms' gradients are written by hand (SpectralProducts, Transform) where autograd's would
read an operand in a layout a bf16 matrix unit reads slowly. Conv1 writes its output straight
into the phase layout. Results equal F.conv2d's up to float32 rounding (tests/test_spectral.py).
CapsNet.forward (capsnet.model) takes this path where `supported` and its `fast_kernels` is on,
and its layers' nn.Conv2d otherwise.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# The widest input the spectral path takes. Its spectra grow with the side squared: measured
# forward and backward against nn.Conv2d on a 2-core AMD EPYC (docs/speed.md), it is faster up
# to 64x64 in bf16 and fp32 (2x at 28), and above it as fast in bf16 and 1.8x slower in fp32 at
# 96, 2.2x and 2.4x slower at 128, with 2.7x-4.5x the memory.
LARGEST_SIDE = 64


def unsupported(device: torch.device, side: int) -> str:
    """Why the spectral path does not take inputs `side` pixels wide on `device` ("": it
    does): on a GPU cuDNN's convolutions are faster, above LARGEST_SIDE nn.Conv2d."""
    if device.type != "cpu":
        return f"the fast form is not for {device.type}"
    if side > LARGEST_SIDE:
        return f"nn.Conv2d is faster above {LARGEST_SIDE}x{LARGEST_SIDE} inputs"
    return ""


def supported(images: Tensor) -> bool:
    """The spectral path runs for float inputs where it is not `unsupported`. Under CPU
    autocast (--precision bf16) its products run in bfloat16 with float32 accumulation."""
    return (images.dtype in (torch.float32, torch.float64)
            and not unsupported(images.device, images.shape[-1]))


def built_in_grad_mode(function: Callable[..., Any]) -> Callable[..., Any]:
    """lru_cache of a function of sizes whose tensors are built outside inference mode, so that
    they serve training steps and inference alike, whichever ran first in the process (tensors
    made under torch.inference_mode cannot be saved for backward)."""
    @functools.lru_cache(maxsize=8)
    @functools.wraps(function)
    def cached(*args: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return function(*args)
    return cached


def autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast runs the products in, where it is on: tensors moved to it before
    their copies move half the bytes, and a kept spectrum belongs to it."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


def grid_size(image_size: int, conv1_kernel: int) -> int:
    """Side n of the phase maps: conv1's output, padded by at most a pixel to 2n x 2n."""
    return (image_size - conv1_kernel + 2) // 2


@built_in_grad_mode
def transforms(n: int, half: int, out: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """DFT matrices over an n x n grid with F frequencies (f = row, column) of half the spectrum,
    for kernels of half x half taps and out <= n - half + 1 outputs per side.

    forward (2F, n*n): real and imaginary rows of each frequency of a real map.
    kernel (2F, half*half): the conjugate spectrum of a kernel, its F real rows above its F
        imaginary ones, so that products of spectra are cross-correlations, as in conv2d.
    inverse (out*out, 4F): the real inverse transform at the valid outputs of the products
        formed with the kernel's real spectrum (its first 2F columns) and imaginary spectrum.
    """
    # Half the spectrum of a real map: columns fx = 0 .. n/2, and in columns 0 and n/2 (where
    # (fy, fx) and (-fy, fx) are conjugate) rows fy = 0 .. n/2 only: 52 frequencies for n = 10.
    fy, fx = torch.meshgrid(torch.arange(n, dtype=torch.float64),
                            torch.arange(n // 2 + 1, dtype=torch.float64), indexing="ij")
    edge = (fx == 0) | (2 * fx == n)
    kept = ~edge | (2 * fy <= n)
    fy, fx, edge = fy[kept], fx[kept], edge[kept]  # (F,)

    def cos_sin(size: int) -> tuple[Tensor, Tensor]:  # of 2 pi (fy y + fx x) / n: (F, size*size)
        y, x = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                              torch.arange(size, dtype=torch.float64), indexing="ij")
        angles = 2 * math.pi * (torch.outer(fy, y.flatten()) + torch.outer(fx, x.flatten())) / n
        # sin(pi) is 1e-16, not 0: such near-zeros meet the small end of a gradient in the
        # products and make denormal numbers, which a CPU computes several times slower.
        cos, sin = (torch.where(m.abs() < 1e-12, 0.0, m) for m in (angles.cos(), angles.sin()))
        return cos, sin

    (grid_cos, grid_sin), (tap_cos, tap_sin) = cos_sin(n), cos_sin(half)
    forward = torch.stack([grid_cos, -grid_sin], dim=1).reshape(-1, n * n)
    # Hermitian weights: a frequency stands for its conjugate too, but for the four that are
    # their own conjugate ((0 or n/2, 0 or n/2): real).
    self_conjugate = edge & ((fy == 0) | (2 * fy == n))
    weight = torch.where(self_conjugate, 1.0, 2.0).double() / (n * n)  # not float32's 0.02
    cos, sin = (m.t() * weight for m in cos_sin(out))  # (out*out, F)
    inverse_re = torch.stack([cos, -sin], dim=2).reshape(out * out, -1)
    inverse_im = torch.stack([-sin, -cos], dim=2).reshape(out * out, -1)
    kernel, inverse = torch.cat([tap_cos, tap_sin]), torch.cat([inverse_re, inverse_im], dim=1)
    return tuple(m.to(dtype) for m in (forward, kernel, inverse))


class PhaseTaps(torch.autograd.Function):
    """A conv weight (O, C, k, k) as taps (O, size, size, C) in `dtype`, zero beyond k: cast
    first, then one transposing copy, and its gradient in one copy back (a cast, a pad and a
    transpose each copied before, forward and back)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, size: int, dtype: torch.dtype) -> Tensor:
        out_channels, channels, kernel, _ = weight.shape
        ctx.kernel, ctx.dtype = kernel, weight.dtype
        taps = weight.new_zeros(out_channels, size, size, channels, dtype=dtype)
        taps[:, :kernel, :kernel].copy_(weight.to(dtype).permute(0, 2, 3, 1))
        return taps

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        taps = grad[:, :ctx.kernel, :ctx.kernel].permute(0, 3, 1, 2)  # (O, C, k, k)
        return taps.to(ctx.dtype, memory_format=torch.contiguous_format), None, None


class Transform(torch.autograd.Function):
    """matrix @ x for a constant matrix, whose gradient matrix^T grad reads the matrix copied
    transposed: a bf16 matrix unit reads a transposed view of it 2x slower."""

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(matrix)
        return matrix @ x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        matrix, = ctx.saved_tensors
        return None, matrix.t().contiguous() @ grad


def kernel_spectrum(weight: Tensor, n: int) -> Tensor:
    """Conjugate spectra of the phase kernels of a stride-2 conv weight (O, C, k, k), transposed:
    (2, F, O, 4C), the real parts then the imaginary, input channels ordered (row phase, column
    phase, channel) as in conv1_phases."""
    out_channels, channels, kernel, _ = weight.shape
    half = (kernel + 1) // 2
    # Tap (2a+p, 2b+q) of phase (p, q), with a zero row and column where k is odd
    taps = PhaseTaps.apply(weight, 2 * half, autocast_dtype() or weight.dtype)  # (O, 2h, 2h, C)
    taps = taps.view(out_channels, half, 2, half, 2, channels)
    phased = taps.permute(1, 3, 0, 2, 4, 5).reshape(half * half, -1)  # (a b, O p q C)
    _, spectrum, _ = transforms(n, half, n - half + 1, taps.dtype)
    return Transform.apply(spectrum, phased).view(2, -1, out_channels, 4 * channels)  # re, im


class SpectralProducts(torch.autograd.Function):
    """The products of the maps' spectra x (F, 2B, 4C) with the kernel's, given transposed as
    kernel_spectrum makes them, (2, F, O, 4C): (2, F, 2B, O). Written by hand so that every
    product reads its operands in the layouts a bf16 matrix unit reads fastest, and the two
    kernels' gradients land in one tensor."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: Tensor) -> Tensor:
        ctx.save_for_backward(x, kernel)
        products = x.new_empty(2, x.shape[0], x.shape[1], kernel.shape[2])
        for part in range(2):  # x K: x (F, 2B, 4C) times K = kernel[part]^T (F, 4C, O)
            torch.bmm(x, kernel[part].transpose(1, 2), out=products[part])
        return products

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, kernel = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_kernel = None
        if ctx.needs_input_grad[0]:  # sum over parts of grad K^T
            grad_x = torch.bmm(grad[0], kernel[0]).baddbmm_(grad[1], kernel[1])
        if ctx.needs_input_grad[1]:  # grad^T x, for each part
            grad_kernel = torch.empty_like(kernel)
            for part in range(2):
                torch.bmm(grad[part].transpose(1, 2), x, out=grad_kernel[part])
        return grad_x, grad_kernel


def conv1_phases(images: Tensor, conv1: nn.Conv2d, n: int) -> Tensor:
    """relu(conv1(images)), (B, C, 2n, 2n), laid out by phase: (n*n, B*4*C), rows (u, v) and
    columns (b, p, q, c) for the output pixel (2u+p, 2v+q) of channel c."""
    batch, channels_in, height, width = images.shape
    kernel = conv1.kernel_size[0]
    size = 2 * n + kernel - 1  # an odd map gets a zero row and column, met only by zero taps
    images = images.to(autocast_dtype() or images.dtype)
    images = F.pad(images, (0, size - width, 0, size - height)).contiguous()
    sb, sc, sh, sw = images.stride()
    windows = images.as_strided(  # (u, v, b, p, q, c_in, i, j)
        (n, n, batch, 2, 2, channels_in, kernel, kernel),
        (2 * sh, 2 * sw, sb, sh, sw, sc, sh, sw))
    columns = windows.reshape(-1, channels_in * kernel * kernel)  # (n*n*B*4, c_in*k*k)
    weight = conv1.weight.view(conv1.out_channels, -1)
    return torch.addmm(conv1.bias, columns, weight.t()).relu_().view(n * n, -1)


def primary_conv(phases: Tensor, spectrum: Tensor, conv: nn.Conv2d, out: int) -> Tensor:
    """conv (stride 2, weight spectrum from kernel_spectrum) of conv1_phases' maps:
    (B, out, out, O), channels-last."""
    _, frequencies, out_channels, channels4 = spectrum.shape
    n, half = math.isqrt(phases.shape[0]), (conv.kernel_size[0] + 1) // 2
    batch = phases.shape[1] // channels4
    forward, _, inverse = transforms(n, half, out, phases.dtype)
    x = Transform.apply(forward, phases).view(frequencies, 2 * batch, channels4)  # (F, 2B, 4C)
    products = SpectralProducts.apply(x, spectrum)  # (kernel re/im, F, re/im B, O)
    maps = inverse @ products.view(4 * frequencies, -1)  # (out*out, B O)
    return maps.view(out, out, batch, out_channels).permute(2, 0, 1, 3) + conv.bias


def conv1_primary(images: Tensor, conv1: nn.Conv2d, primary: nn.Conv2d,
                  spectrum: Callable[[Tensor, int], Tensor] = kernel_spectrum) -> Tensor:
    """primary(relu(conv1(images))) over DFTs, channels-last (B, H', W', O), for images that
    are `supported`; `spectrum` makes the weight's (kernel_spectrum, or a KeptSpectrum)."""
    n = grid_size(images.shape[-1], conv1.kernel_size[0])
    out = (images.shape[-1] - conv1.kernel_size[0] + 1 - primary.kernel_size[0]) // 2 + 1
    phases = conv1_phases(images, conv1, n)  # (n*n, B*4*C)
    # Under torch.compile the spectrum runs eagerly: a cache, not a graph. Wrapped here, not
    # where it is defined, so that a run without --compile never imports the compiler (1-2 s).
    if torch.compiler.is_compiling():
        spectrum = torch.compiler.disable(spectrum)
    return primary_conv(phases, spectrum(primary.weight, n), primary, out)


class KeptSpectrum:
    """kernel_spectrum, kept between the batches of passes without gradients (evaluation) until
    the weight's storage, version or sum changes (the sum catches `.data` writes), and dropped by
    the first pass with gradients. Its owner holds it as a plain attribute (CapsNet's
    kept_spectrum): never in a state_dict, a checkpoint or DDP's broadcast."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.spectrum: Tensor | None = None

    def __call__(self, weight: Tensor, n: int) -> Tensor:
        if torch.is_grad_enabled():
            self.key = self.spectrum = None  # free it while training
            return kernel_spectrum(weight, n)
        key = (weight.data_ptr(), weight._version, weight.dtype, autocast_dtype(), n,
               weight.sum(dtype=torch.float64).item())
        if self.spectrum is None or key != self.key:
            self.key, self.spectrum = key, kernel_spectrum(weight, n)
        return self.spectrum
