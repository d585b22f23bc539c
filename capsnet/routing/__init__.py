"""How primary capsules send their votes to the class capsules (`--routing`): one entry each in
ROUTINGS, with its own module.

Every routing takes the votes u_hat_j|i = W_ij u_i (B, classes, in_caps, dim), the primary
capsules' activations, their lengths |u_i| (B, in_caps), and the class capsules' bias (classes,
dim) or None, added to s_j before squash; it returns a Routed record: the class poses, the class
scores in [0, 1] (what the losses, meters and predictions read) and the coupling coefficients
(B, classes, in_caps) (what the dashboard's routing maps show). Each works in float32 or wider,
under autocast too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .attention import AttentionRouting, authors_weight_std
from .dynamic import DynamicRouting
from .em import EMRouting
from .routed import Routed, paper_weight_std
from .self_attention import SelfAttentionRouting
from .uniform import UniformRouting

__all__ = ["ROUTINGS", "Routed", "Routing"]


@dataclass(frozen=True)
class Routing:
    name: str
    # (in_caps, classes, dim, iterations, detach, leaky, fast_kernels) -> the module; a routing
    # without a fast form (a hand-written backward) runs its one form either way
    make: Callable[..., nn.Module]
    iterates: bool  # takes --routing-iterations
    detaches: bool  # takes --detach-routing
    leaky: bool  # takes --leaky-routing
    bias: bool  # adds the class capsules' bias (--digit-bias, --recipe official) before squash
    about: str
    logits: bool = False  # gives Routed.logits (takes --score-loss cross-entropy)
    lengths: bool = False  # reads the primary capsules' lengths as probabilities (squashed ones)
    # (in_caps, in_dim, classes) -> the standard deviation of W_ij's initial normal
    weight_std: Callable[[int, int, int], float] = paper_weight_std


ROUTINGS: dict[str, Routing] = {r.name: r for r in (
    Routing("dynamic", DynamicRouting, True, True, True, True,
            "routing by agreement, Sabour, Frosst & Hinton 2017, Procedure 1"),
    Routing("self-attention", SelfAttentionRouting, False, False, False, True,
            "the non-iterative self-attention routing of Efficient-CapsNet (Mazzia et al. 2021)"),
    Routing("uniform", UniformRouting, False, False, False, True,
            "no routing: every c_ij is 1/classes (the control)"),
    Routing("em", EMRouting, True, False, False, False,
            "EM routing of matrix capsules, Hinton, Sabour & Frosst 2018, Procedure 1",
            lengths=True),
    Routing("attention", AttentionRouting, True, False, False, False,
            "inverted dot-product attention routing, Tsai et al. 2020", logits=True,
            weight_std=authors_weight_std),
)}
