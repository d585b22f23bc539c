"""The models a run can train (`--model`): one entry each in MODELS, with its own module.

An entry says how to make the model's arguments from the settings and the data's shape, the model
itself, its loss, which arguments a checkpoint's weights must agree on, and whether it has
capsules (a decoder and routing: the reconstruction windows, the figures of capsnet.analyze).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from .baseline import Baseline, BaselineLoss, widths
from .errors import UserError
from .loss import CapsuleLoss
from .model import SMALLEST_IMAGE, CapsNet, CapsNetOutput

SHAPE = ("in_channels", "image_size", "num_classes")  # from the data
CAPSNET_WIDTHS = ("conv1_channels", "primary_types", "primary_dim", "class_dim")


class ModelSettings(Protocol):
    """The settings the entries below read: a run's capsnet.config.Config has them all (this
    module sits under config.py, which takes the model names from MODELS)."""
    recipe: str
    # CapsNet
    conv1_channels: int
    primary_types: int
    primary_dim: int
    class_dim: int
    primary_norm: str
    routing: str
    routing_iterations: int
    leaky_routing: bool
    detach_routing: bool
    digit_bias: bool
    fast_kernels: bool
    # its loss
    score_loss: str
    m_plus: float
    m_minus: float
    lambda_absent: float
    reconstruction_weight: float
    # the baseline
    baseline_channels: str
    baseline_hidden: str
    dropout: float


def capsnet_args(cfg: ModelSettings, objects: int) -> dict[str, Any]:
    return {"routing_iterations": cfg.routing_iterations, "detach_routing": cfg.detach_routing,
            "leaky_routing": cfg.leaky_routing, "routing": cfg.routing,
            "primary_norm": cfg.primary_norm,
            "digit_bias": cfg.digit_bias or cfg.recipe == "official", "recipe": cfg.recipe,
            **{name: getattr(cfg, name) for name in CAPSNET_WIDTHS}}


def baseline_args(cfg: ModelSettings, objects: int) -> dict[str, Any]:
    try:
        channels = widths(cfg.baseline_channels, "--baseline-channels") \
            if cfg.baseline_channels else ()
        hidden = widths(cfg.baseline_hidden, "--baseline-hidden") if cfg.baseline_hidden else ()
    except ValueError as error:
        raise UserError(str(error)) from None
    return {"recipe": cfg.recipe, "channels": list(channels), "hidden": list(hidden),
            "dropout": cfg.dropout, "objects": objects}


def capsule_loss(cfg: ModelSettings, progress: Callable[[], float]) -> CapsuleLoss:
    return CapsuleLoss(cfg.m_plus, cfg.m_minus, cfg.lambda_absent, cfg.reconstruction_weight,
                       class_mean=cfg.recipe == "official",
                       spread=progress if cfg.score_loss == "spread" else None,
                       logits=cfg.score_loss == "cross-entropy")


@dataclass(frozen=True)
class Network:
    name: str
    # (settings, labels per example) -> the model's arguments
    args: Callable[[ModelSettings, int], dict[str, Any]]
    make: Callable[..., nn.Module]  # the model, from SHAPE and those arguments
    # its loss, from the settings and the fraction of the run's steps taken (0 to 1)
    criterion: Callable[[ModelSettings, Callable[[], float]], nn.Module]
    structure: tuple[str, ...]  # arguments a checkpoint's weights must agree on
    capsules: bool  # a decoder and routing to show
    about: str
    smallest_image: int = 1  # the smallest input side it takes
    # settings the model is built with beside its arguments: this invocation's, never a
    # checkpoint's (they change how it computes, not its weights)
    settings: tuple[str, ...] = ()

    def build(self, model_args: dict[str, Any], cfg: ModelSettings) -> nn.Module:
        """The model of `model_args` (a run's or a checkpoint's) with `cfg`'s `settings`."""
        return self.make(**model_args, **{name: getattr(cfg, name) for name in self.settings})


def make_baseline(**args: Any) -> Baseline:
    return Baseline(**{**args, "channels": tuple(args.get("channels", ())),
                       "hidden": tuple(args.get("hidden", ()))})


MODELS: dict[str, Network] = {n.name: n for n in (
    Network(name="capsnet", args=capsnet_args, make=CapsNet, criterion=capsule_loss,
            structure=SHAPE + ("digit_bias", "recipe", "routing", "primary_norm")
            + CAPSNET_WIDTHS, capsules=True,
            about="CapsNet with routing (--routing) and the reconstruction decoder",
            smallest_image=SMALLEST_IMAGE, settings=("fast_kernels",)),
    Network(name="baseline", args=baseline_args, make=make_baseline,
            criterion=lambda cfg, progress: BaselineLoss(),
            structure=SHAPE + ("recipe", "channels", "hidden", "objects"), capsules=False,
            about="the paper's CNN baseline (capsnet/baseline.py)"),
)}


def network_of(config: dict[str, Any]) -> Network:
    """The entry of a checkpoint's saved settings (checkpoints before --model: CapsNet)."""
    return MODELS[config.get("model", "capsnet")]


class Ensemble(nn.Module):
    """Several models of one shape: the prediction is their mean class scores (capsule lengths,
    or the baseline's probabilities); the loss and reconstructions are the first model's."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: Tensor, labels: Tensor | None = None,
                objects: int = 1) -> CapsNetOutput:
        outputs = [member(images, labels, objects) for member in self.members]
        scores = torch.stack([output.scores for output in outputs]).mean(dim=0)
        return outputs[0]._replace(scores=scores)
