"""The grids the figures draw, shared by capsnet.analyze and the live dashboard: each a tensor of
(rows, columns, C, H, W) images in [0, 1] (or maps), on the model's device."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..microbatches import forward_in_parts
from ..model import CapsNet

STEPS = torch.linspace(-0.25, 0.25, 11)  # the paper's Fig. 4 tweaks, 0 in the middle
ROUTED = 4  # test images whose coupling coefficients are drawn


@torch.no_grad()
def by_mask(model: CapsNet, images: Tensor, micro_batch: int = 0) -> Tensor:
    """Each image, then the decoder's reconstruction from each class's capsule in turn:
    (B, 1 + classes, C, H, W); the network run on at most `micro_batch` images at once."""
    output = forward_in_parts(model, images, micro_batch)
    columns = [images] + [model.reconstruct(output.poses, torch.full_like(output.scores[:, 0], k,
                                                                          dtype=torch.long))
                          for k in range(model.num_classes)]
    return torch.stack(columns, dim=1)


@torch.no_grad()
def perturbed(model: CapsNet, image: Tensor) -> tuple[Tensor, int]:
    """Reconstructions of one image (C, H, W) from its predicted class's capsule with each of its
    dimensions tweaked by each of STEPS: (dims, len(STEPS), C, H, W), and the class."""
    output = model(image[None])
    predicted = int(output.scores.argmax())
    dims = output.poses.shape[-1]
    steps = STEPS.to(image.device, output.poses.dtype)
    poses = output.poses.repeat(dims * len(steps), 1, 1)  # (dims*steps, classes, 16)
    rows = torch.arange(dims, device=image.device).repeat_interleave(len(steps))
    poses[torch.arange(len(poses)), predicted, rows] += steps.repeat(dims)
    classes = torch.full((len(poses),), predicted, device=image.device)
    return model.reconstruct(poses, classes).view(dims, len(steps), *image.shape), predicted


@torch.no_grad()
def routing_maps(model: CapsNet, images: Tensor, micro_batch: int = 0) -> Tensor:
    """The last routing iteration's c_ij summed over the primary capsule types, per class, over
    the primary capsules' grid: (B, classes, grid, grid); at most `micro_batch` images at once."""
    # (B, classes, types*grid*grid)
    coupling = forward_in_parts(model, images, micro_batch).coupling
    batch, classes, _ = coupling.shape
    return coupling.view(batch, classes, -1, model.grid, model.grid).sum(dim=2)


@torch.no_grad()
def overlay(images: Tensor) -> Tensor:
    """Two grey images per example (B, 2, 1, H, W) drawn on one in two colours, the first red
    and the second green (yellow where both are), as in the paper's Fig. 5: (B, 3, H, W)."""
    return torch.cat([images[:, 0], images[:, 1], torch.zeros_like(images[:, 0])], dim=1)


def first_per_class(labels: Tensor, classes: int, n: int) -> Tensor:
    """Indices of the first n examples of each class, class by class."""
    return torch.cat([(labels == k).nonzero().flatten()[:n] for k in range(classes)])


def live_figures(showcase: Any, images: Tensor, epoch: int) -> dict[str, tuple[np.ndarray, str]]:
    """The dashboard's grids of a Showcase (capsnet.records) model for the fixed test `images`:
    reconstruction by mask, the first image's capsule dimensions perturbed, and routing maps
    beside their inputs, each with its title."""
    model = showcase.model
    model.eval()
    with torch.inference_mode(), showcase.autocast():
        masks = by_mask(model, images, showcase.micro_batch)  # (classes, 1 + classes, C, H, W)
        tweaks, predicted = perturbed(model, images[0])  # (16, 11, C, H, W)
        maps = routing_maps(model, images[:ROUTED],
                            showcase.micro_batch).float()  # (n, classes, grid, grid)
    model.train()
    low = maps.flatten(1).min(dim=1).values[:, None, None, None]
    high = maps.flatten(1).max(dim=1).values[:, None, None, None]
    scaled = (maps - low) / (high - low).clamp_min(1e-12)  # each input on its own scale
    maps = F.interpolate(scaled, size=images.shape[-2:], mode="nearest")
    maps = maps[:, :, None].expand(-1, -1, images.shape[1], -1, -1)
    routing = torch.cat([images[:ROUTED, None], maps], dim=1)
    return {
        "by_mask": (masks.float().cpu().numpy(),
                    f"Reconstruction from each class's capsule, epoch {epoch}"),
        "perturbation": (tweaks.float().cpu().numpy(),
                         f"Capsule dimensions of {showcase.classes[predicted]}, -0.25..+0.25, "
                         f"epoch {epoch}"),
        "routing": (routing.float().cpu().numpy(),
                    f"Routing: votes per class (c_ij), epoch {epoch}"),
    }


def reconstructions(showcase: Any, samples: Tensor) -> np.ndarray:
    """The Showcase model's reconstructions of `samples` (two digits: overlaid in two colours)."""
    model = showcase.model
    model.eval()
    with torch.inference_mode(), showcase.autocast():
        output = forward_in_parts(model, samples, showcase.micro_batch, None, showcase.objects)
    model.train()
    rebuilt = output.reconstructions
    if rebuilt.dim() == 5:  # two digits: both on one image, in two colours
        rebuilt = overlay(rebuilt)
    return rebuilt.float().cpu().numpy()
