"""An offline stand-in for affNIST, NOT affNIST itself: the MNIST test digits under seeded random
affine transforms, on a black 40x40 canvas. Anyone gets the same 10,000 images from MNIST's
test files, so runs without affNIST's download can still be compared with one another (not with
the paper's 79%).

The ranges are those the affNIST page gives for its transforms
(https://www.cs.toronto.edu/~tijmen/affNIST/): rotation up to 20 degrees either way, shear up to
0.2 either way, horizontal and vertical scale each from 0.8 to 1.2, and a random translation that
keeps the digit's ink inside the 40x40 image. Each is drawn uniformly and independently per image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .records import Split

SIDE = 40
SEED = 20171026  # fixed: the stand-in test set is the same for every run
ROTATION = math.radians(20.0)
SHEAR = 0.2
SCALE = (0.8, 1.2)
CHUNK = 1000


def ink_box(images: Tensor) -> Tensor:
    """The corners (x, y) of each image's ink (its non-zero pixels) bounding box, in pixels about
    the canvas centre: (N, 4, 2)."""
    ink = images[:, 0] > 0  # (N, H, W)
    side = images.shape[-1]
    span = torch.arange(side, dtype=torch.float64, device=images.device)

    def extent(inked: Tensor) -> tuple[Tensor, Tensor]:  # (N, side) -> first, last+1 inked
        low = torch.where(inked, span, float(side)).min(dim=1).values
        high = torch.where(inked, span, -1.0).max(dim=1).values + 1.0
        empty = low > high  # no ink: the whole canvas
        return torch.where(empty, 0.0, low), torch.where(empty, float(side), high)
    x0, x1 = extent(ink.any(dim=1))
    y0, y1 = extent(ink.any(dim=2))
    corners = torch.stack([torch.stack([x, y], dim=1) for x in (x0, x1) for y in (y0, y1)], dim=1)
    return corners - side / 2  # (N, 4, 2), about the centre


def draws(count: int) -> Tensor:
    """Six uniform numbers in [0, 1) per image, (N, 6), from the fixed seed: image i gets the same
    six whatever N is, so the first images of a shorter set (--test-samples) are the same."""
    return torch.rand(count, 6, generator=torch.Generator().manual_seed(SEED),
                      dtype=torch.float64)


def transforms(u: Tensor) -> Tensor:
    """Linear parts A = rotation . shear . scale, (N, 2, 2) acting on (x, y), from draws()."""
    angle = ROTATION * (2 * u[:, 0] - 1)
    shear = SHEAR * (2 * u[:, 1] - 1)
    sx, sy = (SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, k] for k in (2, 3))
    cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    rotation = torch.stack([cos, -sin, sin, cos], dim=1).view(-1, 2, 2)
    shearing = torch.stack([one, shear, zero, one], dim=1).view(-1, 2, 2)
    scaling = torch.stack([sx, zero, zero, sy], dim=1).view(-1, 2, 2)
    return rotation @ shearing @ scaling


def make(split: Split) -> Split:
    """The split's 28x28 digits, centred on 40x40 and transformed: a new Split of 1x40x40."""
    pad = (SIDE - split.images.shape[-1]) // 2
    canvas = F.pad(split.images, (pad,) * 4)  # (N, 1, 40, 40) uint8
    count = len(split)
    u = draws(count).to(split.images.device)
    linear = transforms(u)  # (N, 2, 2)
    moved = ink_box(canvas) @ linear.transpose(1, 2)  # (N, 4, 2): the ink box transformed
    low = -SIDE / 2 - moved.min(dim=1).values  # translations that keep the ink inside
    high = SIDE / 2 - moved.max(dim=1).values
    fraction = u[:, 4:]  # (N, 2): where in the allowed range
    shift = torch.where(low <= high, low + fraction * (high - low), 0.0)  # (N, 2) pixels
    inverse = torch.linalg.inv(linear)  # the sampling grid maps output to input pixels
    theta = torch.cat([inverse, -(inverse @ (shift * 2 / SIDE)[..., None])], dim=2)
    out = torch.empty_like(canvas)
    for start in range(0, count, CHUNK):
        part = slice(start, start + CHUNK)
        grid = F.affine_grid(theta[part].float(), list(canvas[part].shape), align_corners=False)
        sampled = F.grid_sample(canvas[part].float(), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        out[part] = sampled.round().clamp(0, 255).to(torch.uint8)
    return Split(out, split.labels, split.classes)
