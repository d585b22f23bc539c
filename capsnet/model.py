"""CapsNet of Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules" (NIPS 2017)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import spectral
from .routing import ROUTINGS, Routed, Shape
from .squashing import squash


PRIMARY_NORMS = ("squash", "layer-norm")  # what makes a primary capsule of its conv output


class PrimaryCapsules(nn.Module):
    """One convolution whose channels form `types` capsule types of `dim` components each,
    squashed (eq. 1), or with `norm` "layer-norm" layer-normalised over the `dim` components
    with a learned gain and bias (Tsai et al. 2020's primary capsules). With `scale`, the
    pre-activation is scale * conv(x) + bias (the official code's 1/32)."""

    def __init__(self, in_channels: int = 256, types: int = 32, dim: int = 8,
                 kernel_size: int = 9, stride: int = 2, scale: float = 1.0,
                 norm: str = "squash") -> None:
        super().__init__()
        if norm not in PRIMARY_NORMS:
            raise ValueError(f"norm must be one of {PRIMARY_NORMS}, got {norm!r}")
        self.types, self.dim, self.scale = types, dim, scale
        self.conv = nn.Conv2d(in_channels, types * dim, kernel_size, stride)
        self.layer_norm = nn.LayerNorm(dim) if norm == "layer-norm" else None

    def forward(self, features: Tensor) -> Tensor:
        """Capsules of conv1's features (B, 256, H, W)."""
        return self.capsules(self.conv(features).permute(0, 2, 3, 1))

    def capsules(self, out: Tensor) -> Tensor:
        """This layer's conv output, channels-last (B, H, W, types*dim) with channel
        type*dim + component, as capsules u_i: (B, types*H*W, dim), ordered by type, row,
        column."""
        batch, height, width, _ = out.shape
        if self.scale != 1.0:
            out = torch.add(self.conv.bias, out - self.conv.bias, alpha=self.scale)
        u = out.reshape(batch, height, width, self.types, self.dim).permute(0, 3, 1, 2, 4)
        u = u.reshape(batch, self.types * height * width, self.dim)
        return squash(u) if self.layer_norm is None else self.layer_norm(u)


class DigitCapsules(nn.Module):
    """One capsule per class, fed by every primary capsule through its own weight W_ij, its
    votes combined by a routing of capsnet.routing (`routing`: a name in ROUTINGS), through its
    fast form (a hand-written backward) with `fast_kernels`, where it has one."""

    def __init__(self, in_caps: int, in_dim: int = 8, out_caps: int = 10, out_dim: int = 16,
                 iterations: int = 3, detach_inner: bool = False, bias: bool = False,
                 leaky: bool = False, routing: str = "dynamic", fast_kernels: bool = True) -> None:
        super().__init__()
        std = ROUTINGS[routing].weight_std(in_caps, in_dim, out_caps)
        self.weight = nn.Parameter(std * torch.randn(in_caps, out_caps, out_dim, in_dim))  # W_ij
        if bias and not ROUTINGS[routing].bias:
            raise ValueError(f"the {routing} routing takes no class-capsule bias")
        self.bias = nn.Parameter(torch.zeros(out_caps, out_dim)) if bias else None
        self.routing = ROUTINGS[routing].make(Shape(in_caps, out_caps, out_dim, iterations,
                                                    detach_inner, leaky, fast_kernels))

    def forward(self, u: Tensor) -> Routed:
        """u_i (B, in_caps, in_dim) -> poses (B, out_caps, out_dim), scores (B, out_caps) and
        coupling (B, out_caps, in_caps)."""
        in_caps, out_caps, out_dim, in_dim = self.weight.shape
        weight = self.weight.view(in_caps, out_caps * out_dim, in_dim).transpose(1, 2)
        u_hat = torch.bmm(u.transpose(0, 1), weight)  # (in_caps, B, out_caps*out_dim)
        u_hat = u_hat.view(in_caps, -1, out_caps, out_dim).permute(1, 2, 0, 3).contiguous()
        activations = torch.linalg.vector_norm(u, dim=-1)  # |u_i|: (B, in_caps)
        return self.routing(u_hat, activations, self.bias)  # u_hat: (B, out_caps, in_caps, dim)


class Decoder(nn.Module):
    """FC classes*class_dim (160) -> 512 -> 1024 -> pixels, sigmoid; fed the pose of one capsule
    only."""

    def __init__(self, in_features: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = image_shape
        pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.layers = nn.Sequential(
            nn.Linear(in_features, 512), nn.ReLU(inplace=True),
            nn.Linear(512, 1024), nn.ReLU(inplace=True),
            nn.Linear(1024, pixels), nn.Sigmoid(),
        )

    def forward(self, poses: Tensor, mask: Tensor) -> Tensor:
        """poses (..., classes, class_dim) and mask (..., classes) -> images (..., C, H, W)."""
        masked = (poses * mask.unsqueeze(-1)).flatten(-2)  # (..., classes*class_dim)
        return self.layers(masked).view(*masked.shape[:-1], *self.image_shape)


def official_init(model: nn.Module) -> None:
    """The released code's initial values: decoder weights from a normal of std 0.1 truncated
    at two std and biases 0.1; conv1 weights likewise with std 0.05."""
    with torch.no_grad():
        for layer in model.decoder.layers:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.1, a=-0.2, b=0.2)
                nn.init.constant_(layer.bias, 0.1)
        nn.init.trunc_normal_(model.conv1.weight, std=0.05, a=-0.1, b=0.1)


class CapsNetOutput(NamedTuple):
    # (B, classes) in [0, 1]: Routed.scores, the class scores (the capsules' lengths |v_j| for
    # dynamic routing; a sigmoid or an EM activation for others)
    scores: Tensor
    poses: Tensor  # (B, classes, 16): the digit capsules v_j
    reconstructions: Tensor  # like the input images, in [0, 1]; (B, K, C, H, W) for K digits
    coupling: Tensor | None = None  # (B, classes, in_caps): c_ij of the last routing iteration
    logits: Tensor | None = None  # (B, classes): Routed.logits, from a routing that has them


RECIPES = ("paper", "official")
# conv1 (9x9) leaves side - 8; PrimaryCaps (9x9, stride 2) needs 9 of those for one position
SMALLEST_IMAGE = 17


class CapsNet(nn.Module):
    """Conv1 -> PrimaryCaps -> DigitCaps (dynamic routing, or another `routing` of
    capsnet.routing) -> decoder; MNIST shapes by default.

    `recipe` "official" follows the authors' released code where it departs from the paper:
    PrimaryCaps pre-activation conv(x)/32 + bias, a learned bias on the digit capsules before
    every squash, and its initial weights (see `official_init`).

    `fast_kernels` computes the same network with faster kernels where they apply: conv1 and
    PrimaryCaps over DFTs on the CPU (capsnet.spectral), the routing with a hand-written
    backward. Off, every layer runs as written here, left to autograd: the form to edit. The
    commands check each fast form against the form written here when they build the model
    (capsnet.kernels), and run a layer as written wherever its fast form differs."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 routing_iterations: int = 3, detach_routing: bool = False,
                 digit_bias: bool = False, recipe: str = "paper", conv1_channels: int = 256,
                 primary_types: int = 32, primary_dim: int = 8, class_dim: int = 16,
                 leaky_routing: bool = False, routing: str = "dynamic",
                 primary_norm: str = "squash", fast_kernels: bool = True) -> None:
        super().__init__()
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        official = recipe == "official"
        self.num_classes, self.fast_kernels = num_classes, fast_kernels
        self.conv1 = nn.Conv2d(in_channels, conv1_channels, kernel_size=9, stride=1)
        self.primary = PrimaryCapsules(conv1_channels, types=primary_types, dim=primary_dim,
                                       kernel_size=9, stride=2,
                                       scale=1 / primary_types if official else 1.0,
                                       norm=primary_norm)
        grid = ((image_size - 8) - 9) // 2 + 1  # 6 for 28x28 inputs
        if image_size < SMALLEST_IMAGE:
            raise ValueError(f"images of {image_size}x{image_size} are too small for CapsNet "
                             f"(>= {SMALLEST_IMAGE})")
        self.digits = DigitCapsules(primary_types * grid * grid, primary_dim, num_classes,
                                    class_dim, routing_iterations, detach_routing,
                                    digit_bias or official, leaky_routing, routing, fast_kernels)
        self.decoder = Decoder(num_classes * class_dim, (in_channels, image_size, image_size))
        self.grid = grid
        self.kept_spectrum = spectral.KeptSpectrum()  # PrimaryCaps' spectrum while evaluating
        if official:
            official_init(self)

    def forward(self, images: Tensor, labels: Tensor | None = None,
                objects: int = 1) -> CapsNetOutput:
        """Mask the decoder with `labels` when given: (B,) class indices, or (B, K) for one
        reconstruction per digit (MultiMNIST). Without labels: the predicted class, or with
        `objects` K > 1 the K longest capsules, in ascending class order."""
        if images.dim() != 4 or images.shape[1:] != self.decoder.image_shape:
            channels, height, width = self.decoder.image_shape
            raise ValueError(f"this CapsNet takes images of shape (B, {channels}, {height}, "
                             f"{width}), got {tuple(images.shape)}")
        u = self.primary_capsules(images)  # (B, 1152, 8)
        routed = self.digits(u)  # poses (B, classes, 16), scores (B, classes), coupling
        chosen = labels if labels is not None else predict(routed.scores, objects)
        return CapsNetOutput(routed.scores, routed.poses, self.reconstruct(routed.poses, chosen),
                             routed.coupling, routed.logits)

    def primary_capsules(self, images: Tensor) -> Tensor:
        """u_i (B, 1152, 8): conv1 (B, 256, 20, 20), ReLU and PrimaryCaps, or with
        `fast_kernels` the same through capsnet.spectral on a CPU (capsnet.kernels checks the
        two equal at a run's start and sets the fast form aside where they are not)."""
        if self.fast_kernels and spectral.supported(images):
            return self.primary.capsules(spectral.conv1_primary(
                images, self.conv1, self.primary.conv, self.kept_spectrum))
        return self.primary(F.relu(self.conv1(images)))

    def reconstruct(self, poses: Tensor, classes: Tensor) -> Tensor:
        """The decoder's image from the capsule of class classes[b] of each example: poses
        (B, classes, 16), classes (B,) -> (B, C, H, W), or classes (B, K) -> (B, K, C, H, W).
        Any poses will do: perturbed ones too."""
        mask = F.one_hot(classes, self.num_classes).to(poses.dtype)  # (B, [K,] classes)
        if classes.dim() == 2:
            poses = poses.unsqueeze(1)  # (B, 1, classes, 16): the same capsules for each digit
        return self.decoder(poses, mask)


def predict(lengths: Tensor, objects: int = 1) -> Tensor:
    """The predicted class of each example, (B,); for `objects` > 1 the classes of the longest
    `objects` capsules in ascending order, (B, objects). Equal lengths go to the lower class."""
    if objects == 1:
        return lengths.argmax(dim=1)  # the first of equal maxima
    longest = lengths.argsort(dim=1, descending=True, stable=True)[:, :objects]
    return longest.sort(dim=1).values
