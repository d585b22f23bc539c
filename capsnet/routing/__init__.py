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
from typing import Callable, NamedTuple

from torch import nn

from .attention import AttentionRouting, authors_weight_std
from .dynamic import DynamicRouting
from .em import EMRouting
from .routed import Routed, paper_weight_std
from .self_attention import SelfAttentionRouting
from .uniform import UniformRouting

__all__ = ["ROUTINGS", "Routed", "Routing", "Shape"]


class Shape(NamedTuple):
    """What a routing may be built from: its inputs' and outputs' sizes and the run's options."""
    in_caps: int  # primary capsules
    classes: int
    dim: int  # of a class capsule
    iterations: int = 1  # --routing-iterations
    detach: bool = False  # --detach-routing
    leaky: bool = False  # --leaky-routing
    fast_kernels: bool = True  # its fast form, where it has one


@dataclass(frozen=True)
class Routing:
    name: str
    make: Callable[[Shape], nn.Module]  # the layer, from what of the Shape it takes
    about: str
    iterates: bool = False  # takes --routing-iterations
    detaches: bool = False  # takes --detach-routing
    leaky: bool = False  # takes --leaky-routing
    # adds the class capsules' bias (--digit-bias, --recipe official) before squash
    bias: bool = False
    logits: bool = False  # gives Routed.logits (takes --score-loss cross-entropy)
    lengths: bool = False  # reads the primary capsules' lengths as probabilities (squashed ones)
    # (in_caps, in_dim, classes) -> the standard deviation of W_ij's initial normal
    weight_std: Callable[[int, int, int], float] = paper_weight_std


ROUTINGS: dict[str, Routing] = {r.name: r for r in (
    Routing(name="dynamic",
            make=lambda s: DynamicRouting(s.iterations, s.detach, s.leaky, s.fast_kernels),
            about="routing by agreement, Sabour, Frosst & Hinton 2017, Procedure 1",
            iterates=True, detaches=True, leaky=True, bias=True),
    Routing(name="self-attention", make=lambda s: SelfAttentionRouting(s.in_caps, s.classes),
            about="the non-iterative self-attention routing of Efficient-CapsNet (Mazzia et al. "
            "2021)", bias=True),
    Routing(name="uniform", make=lambda s: UniformRouting(),
            about="no routing: every c_ij is 1/classes (the control)", bias=True),
    Routing(name="em", make=lambda s: EMRouting(s.classes, s.iterations, s.fast_kernels),
            about="EM routing of matrix capsules, Hinton, Sabour & Frosst 2018, Procedure 1",
            iterates=True, lengths=True),
    Routing(name="attention", make=lambda s: AttentionRouting(s.dim, s.iterations),
            about="inverted dot-product attention routing, Tsai et al. 2020", iterates=True,
            logits=True, weight_std=authors_weight_std),
)}
