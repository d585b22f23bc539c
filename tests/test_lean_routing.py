"""The training path's routing (capsnet.lean_routing) against Procedure 1 as model.py writes it."""
import copy
import itertools

import pytest
import torch

from capsnet import lean_routing
from capsnet.model import CapsNet, dynamic_routing
from capsnet.networks import MODELS

OPTIONS = list(itertools.product((1, 2, 3), (False, True), (False, True), (False, True)))


def routed(routing, u_hat, iterations, detach, bias, leaky):
    """Outputs and the gradients of a loss of both outputs (the coupling too)."""
    u_hat = u_hat.clone().requires_grad_()
    bias = bias.clone().requires_grad_() if bias is not None else None
    v, coupling = routing(u_hat, iterations, detach, bias, leaky)
    weights = torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)
    ((v * weights).sum() + (coupling[:, :2] ** 2).sum()).backward()
    return [v, coupling, u_hat.grad] + ([bias.grad] if bias is not None else [])


@pytest.mark.parametrize("iterations,detach,bias,leaky", OPTIONS)
def test_lean_routing_equals_procedure_1_with_its_gradients_in_float64(iterations, detach,
                                                                       bias, leaky):
    g = torch.Generator().manual_seed(iterations)
    u_hat = torch.randn(3, 4, 25, 6, dtype=torch.float64, generator=g)  # (B, out, in, dim)
    b = torch.randn(4, 6, dtype=torch.float64, generator=g) if bias else None
    expected = routed(dynamic_routing, u_hat, iterations, detach, b, leaky)
    got = routed(lean_routing.dynamic_routing, u_hat, iterations, detach, b, leaky)
    for a, e in zip(got, expected):
        assert a.shape == e.shape and torch.allclose(a, e, rtol=0, atol=1e-12)


def test_lean_routing_equals_procedure_1_in_float32_at_the_papers_size():
    torch.manual_seed(0)
    u_hat = 0.05 * torch.randn(8, 10, 1152, 16)
    expected = routed(dynamic_routing, u_hat, 3, False, None, False)
    got = routed(lean_routing.dynamic_routing, u_hat, 3, False, None, False)
    for a, e in zip(got, expected):
        assert torch.allclose(a, e, rtol=1e-4, atol=1e-5)


def test_lean_routing_stays_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    u_hat = torch.randn(2, 10, 64, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, coupling = lean_routing.dynamic_routing(u_hat, 3)
    assert v.dtype == torch.float32 and coupling.dtype == torch.float32
    v_ref, _ = dynamic_routing(u_hat.float(), 3)
    assert torch.allclose(v, v_ref, atol=1e-6)


def test_the_built_model_routes_through_the_lean_path_and_the_papers_model_does_not():
    torch.manual_seed(0)
    plain = CapsNet(conv1_channels=16, primary_types=4)
    built = MODELS["capsnet"].make(conv1_channels=16, primary_types=4)
    built.load_state_dict(plain.state_dict())
    assert plain.digits.routing is dynamic_routing
    assert built.digits.routing is lean_routing.dynamic_routing
    images, labels = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    outputs = [model(images, labels) for model in (plain, built)]
    assert torch.allclose(outputs[0].lengths, outputs[1].lengths, atol=1e-6)
    for model, output in zip((plain, built), outputs):
        (output.lengths.sum() + output.reconstructions.sum()).backward()
    for a, b in zip(plain.parameters(), built.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    twin = copy.deepcopy(built)  # copies keep the lean path
    assert twin.digits.routing is lean_routing.dynamic_routing
