"""The fast forms of CapsNet's layers, checked against the code as written when a command builds
the model: a fast form runs only where it computes what the code as written computes.

A layer with a fast form chooses it in its own forward by its `fast_kernels` flag, with the form
as written beside it. `check` runs both forms of every layer in FAST_FORMS once, on a float64
twin of the model at its smallest input side (two images), outside the run's autocast, gradient
mode and random numbers: the same outputs, and the same gradients of a fixed random projection of
them with respect to the inputs and every parameter, within TOLERANCE. `apply` turns a fast form
off where it differed, or where the run asked for none (--no-fast-kernels). A new fast form joins
the check by an entry in FAST_FORMS (docs/models.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from . import spectral
from .model import SMALLEST_IMAGE, CapsNet
from .routing.routed import Routed

# The largest relative difference (|fast - written| / |written|, of each output and gradient)
# taken for float64 rounding: both forms agree to about 1e-14 (tests/test_kernels.py), and an
# edit that changes what a layer computes moves them apart by far more.
TOLERANCE = 1e-8
SEED = 20171026  # the check's own random numbers: its twin's weights, its inputs, its projection
FAST, WRITTEN = "fast", "as written"  # config.json's words for a layer's form


@dataclass(frozen=True)
class FastForm:
    """One layer's fast form: where it is, what it is called, and what both forms are run on."""
    name: str  # its key in config.json's "kernels"
    what: str  # the layer, in words
    # the module whose fast_kernels chooses the form (None: the model has no such layer; a layer
    # without fast_kernels has no fast form)
    layer: Callable[[nn.Module], nn.Module | None]
    names: Callable[[nn.Module], tuple[str, str]]  # the layer's (fast form, form as written)
    fast_words: str  # what the fast form is, in the run's first line
    # (twin, generator) -> float64 inputs that require gradients
    inputs: Callable[[nn.Module, torch.Generator], tuple[Tensor, ...]]
    run: Callable[..., Sequence[Tensor | None]]  # (twin, *inputs) -> the outputs compared
    parameters: Callable[[nn.Module], list[nn.Parameter]]  # whose gradients are compared
    # (device, layer) -> why the fast form does not apply to the run ("": it does)
    not_for: Callable[[torch.device, nn.Module], str] = lambda device, layer: ""


def capsnet_of(model: nn.Module) -> CapsNet | None:
    return model if isinstance(model, CapsNet) else None


def routing_of(model: nn.Module) -> nn.Module | None:
    return model.digits.routing if isinstance(model, CapsNet) else None


def routing_forms(routing: nn.Module) -> tuple[str, str]:
    """(procedure_1, dynamic_routing) and the like: a routing's FORMS, or ("", its class)."""
    return getattr(routing, "FORMS", ("", type(routing).__name__))


def two_images(twin: CapsNet, generator: torch.Generator) -> tuple[Tensor]:
    channels, height, width = twin.decoder.image_shape
    return (torch.rand(2, channels, height, width, generator=generator,
                       dtype=torch.float64).requires_grad_(),)


def votes_and_activations(twin: CapsNet, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Votes u_hat (2, classes, in_caps, dim) whose sums s_j have lengths near 1 (where squash
    bends), and activations (2, in_caps) in (0, 1)."""
    in_caps, classes, dim, _ = twin.digits.weight.shape
    scale = classes / (in_caps * dim) ** 0.5
    votes = scale * torch.randn(2, classes, in_caps, dim, generator=generator,
                                dtype=torch.float64)
    activations = 0.05 + 0.9 * torch.rand(2, in_caps, generator=generator, dtype=torch.float64)
    return votes.requires_grad_(), activations.requires_grad_()


def routed(twin: CapsNet, votes: Tensor, activations: Tensor) -> Routed:
    return twin.digits.routing(votes, activations, twin.digits.bias)


FAST_FORMS: tuple[FastForm, ...] = (
    FastForm("conv1_primary", "conv1/PrimaryCaps", capsnet_of,
             lambda layer: ("spectral.conv1_primary", "conv1, ReLU and PrimaryCapsules.forward"),
             "spectral conv1/PrimaryCaps (CPU)", two_images,
             lambda twin, images: [twin.primary_capsules(images)],
             lambda twin: [*twin.conv1.parameters(), *twin.primary.parameters()],
             not_for=lambda device, model: spectral.unsupported(device,
                                                               model.decoder.image_shape[-1])),
    FastForm("routing", "routing", routing_of, routing_forms,
             "routing backward by hand", votes_and_activations, routed,
             lambda twin: [*twin.digits.routing.parameters(),
                           *([twin.digits.bias] if twin.digits.bias is not None else [])]),
)


@dataclass(frozen=True)
class Verdict:
    """What the check found for one fast form."""
    form: str  # FastForm.name
    used: bool  # the run computes this layer through its fast form
    fast: str = ""  # the fast form's name ("" where the layer has none)
    written: str = ""  # the form as written
    apart: str = ""  # how far apart the forms were, in words, where the fast form was set aside
    why: str = ""  # why the layer runs as written, where it does

    def warning(self, doing: str, silence: str) -> str:
        """The line that says a fast form was set aside ("" where it was not): `doing` what,
        and how to `silence` it."""
        if not self.apart:
            return ""
        form = next(f for f in FAST_FORMS if f.name == self.form)
        return (f"fast {form.what} set aside: {self.fast} differs from {self.written} as written "
                f"({self.apart}); {doing} {self.written} as written (slower). Update the fast "
                f"form{', or ' + silence if silence else ''}.")


@dataclass(frozen=True)
class Kernels:
    """The forms a model computes with: a verdict per fast form, and the check's seconds."""
    verdicts: tuple[Verdict, ...] = ()
    seconds: float = 0.0

    def record(self) -> dict[str, str]:
        """config.json's "kernels": each fast form's name -> "fast" or "as written"."""
        return {v.form: FAST if v.used else WRITTEN for v in self.verdicts}

    def line(self) -> str:
        """The run's first line's words for them."""
        words = {f.name: f for f in FAST_FORMS}
        fast = [words[v.form].fast_words for v in self.verdicts if v.used]
        written = [f"{words[v.form].what} as written ({v.written}: {v.why})"
                   for v in self.verdicts if not v.used]
        parts = []
        if fast:
            both = "both " if len(fast) == 2 else "all " if len(fast) > 2 else ""
            parts.append(f"{' and '.join(fast)}, {both}checked equal to the code as written "
                         f"({self.seconds:.1f} s)")
        if written:
            parts.append(", ".join(written))
        return "kernels: " + ("; ".join(parts) if parts else "as written")

    def warnings(self, doing: str = "training",
                 silence: str = "train with --no-fast-kernels to silence this") -> list[str]:
        """A line for each fast form set aside (Verdict.warning)."""
        return [line for line in (v.warning(doing, silence) for v in self.verdicts) if line]


def relative_gap(fast: Sequence[Tensor | None], written: Sequence[Tensor | None]) -> float:
    """The largest |a - b| / |b| over pairs of tensors; inf where their shapes or presence
    differ, 0 where both are None."""
    if len(fast) != len(written):
        return float("inf")
    gap = 0.0
    for a, b in zip(fast, written):
        if a is None or b is None:
            if a is not b:
                return float("inf")
            continue
        if a.shape != b.shape:
            return float("inf")
        size = float(b.norm())
        difference = float((a - b).norm())
        gap = max(gap, difference / size if size > 0 else (0.0 if difference == 0 else
                                                             float("inf")))
    return gap


def compare(form: FastForm, twin: CapsNet) -> tuple[float, float]:
    """The relative gaps between the fast form and the form as written of `form`'s layer in the
    twin: of the outputs, and of the gradients of one random projection of them."""
    layer = form.layer(twin)
    results = []
    for fast in (True, False):
        generator = torch.Generator().manual_seed(SEED)  # the same inputs and projection
        inputs = form.inputs(twin, generator)
        layer.fast_kernels = fast
        outputs = [output for output in form.run(twin, *inputs) if output is not None]
        projected = sum((output * torch.randn(output.shape, generator=generator,
                                              dtype=output.dtype)).sum() for output in outputs)
        grads = torch.autograd.grad(projected, [*inputs, *form.parameters(twin)],
                                    allow_unused=True)
        results.append(([output.detach() for output in outputs], grads))
    (fast_out, fast_grads), (written_out, written_grads) = results
    return relative_gap(fast_out, written_out), relative_gap(fast_grads, written_grads)


def in_words(outputs: float, gradients: float) -> str:
    def percent(gap: float) -> str:
        return "of other shapes" if gap == float("inf") else f"{100 * gap:.2g}% apart"
    if outputs > TOLERANCE:
        return f"outputs {percent(outputs)}"
    return f"gradients {percent(gradients)}"


def twin_of(model: CapsNet, model_args: dict[str, Any]) -> CapsNet:
    """A float64 CapsNet on the CPU of `model`'s class and arguments at its smallest input side,
    every fast form on, its weights from the check's own seed."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(SEED)
        twin = type(model)(**{**model_args, "image_size": SMALLEST_IMAGE, "fast_kernels": True})
    return twin.double()


def check(model: nn.Module, model_args: dict[str, Any], device: torch.device) -> Kernels:
    """Each fast form of `model` (made of `model_args`) against the code as written: used where
    it is on and agrees, set aside where it differs. Changes no weight, random number or state
    of the run."""
    started = time.perf_counter()
    verdicts, twin = [], None
    for form in FAST_FORMS:
        layer = form.layer(model)
        if layer is None:
            continue
        fast, written = form.names(layer)
        why = ("no fast form" if not hasattr(layer, "fast_kernels") else
               "--no-fast-kernels" if not layer.fast_kernels else
               form.not_for(device, layer))
        if why:
            verdicts.append(Verdict(form.name, False, fast, written, why=why))
            continue
        # the twin lives on the CPU: the run's CPU autocast, gradient mode and inference mode
        # are set aside, and its CUDA state is never touched
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast("cpu", enabled=False):
            if twin is None:
                twin = twin_of(model, model_args)
            outputs, gradients = compare(form, twin)
        equal = outputs <= TOLERANCE and gradients <= TOLERANCE
        apart = "" if equal else in_words(outputs, gradients)
        verdicts.append(Verdict(form.name, equal, fast, written, apart,
                                "" if equal else f"{fast} set aside"))
    return Kernels(tuple(verdicts), time.perf_counter() - started)


def apply(model: nn.Module, record: dict[str, str]) -> None:
    """Turn each fast form of `model` on or off as `record` (Kernels.record) says."""
    for form in FAST_FORMS:
        layer = form.layer(model)
        if hasattr(layer, "fast_kernels") and form.name in record:
            layer.fast_kernels = record[form.name] == FAST


def checked(model: nn.Module, model_args: dict[str, Any], device: torch.device,
            world: Any = None) -> Kernels:
    """check, by rank 0 under torchrun (the others take its verdicts), then apply."""
    kernels = check(model, model_args, device) if world is None or world.main else None
    kernels = world.broadcast(kernels) if world is not None else kernels
    apply(model, kernels.record())
    return kernels
