import pytest
import torch
import torch.nn.functional as F
from torch import nn

from capsnet import spectral
from capsnet.model import CapsNet


def direct(images: torch.Tensor, conv1: nn.Conv2d, conv2: nn.Conv2d) -> torch.Tensor:
    return conv2(F.relu(conv1(images))).permute(0, 2, 3, 1)  # (B, H, W, O)


def spectral_conv(images: torch.Tensor, conv1: nn.Conv2d, conv2: nn.Conv2d) -> torch.Tensor:
    n = spectral.grid_size(images.shape[-1], conv1.kernel_size[0])
    out = (images.shape[-1] - 8 - conv2.kernel_size[0]) // 2 + 1
    phases = spectral.conv1_phases(images, conv1, n)
    return spectral.primary_conv(phases, spectral.kernel_spectrum(conv2.weight, n), conv2, out)


@pytest.mark.parametrize("size, kernel", [(28, 9), (27, 9), (25, 9), (30, 7), (21, 4)])
def test_spectral_convolutions_equal_conv2d_with_gradients(size: int, kernel: int):
    torch.manual_seed(0)
    conv1 = nn.Conv2d(2, 6, 9).double()
    conv2 = nn.Conv2d(6, 5, kernel, stride=2).double()
    images = torch.rand(3, 2, size, size, dtype=torch.float64)
    expected, got = direct(images, conv1, conv2), spectral_conv(images, conv1, conv2)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-10)
    grad = torch.randn_like(expected)
    params = list(conv1.parameters()) + list(conv2.parameters())
    for a, b in zip(torch.autograd.grad(expected, params, grad),
                    torch.autograd.grad(got, params, grad)):
        assert torch.allclose(a, b, atol=1e-9)


def test_capsnet_on_the_cpu_matches_plain_convolutions_in_float32():
    torch.manual_seed(0)
    model = spectral.install(CapsNet())
    images = torch.rand(4, 1, 28, 28)
    expected = model.primary(F.relu(model.conv1(images)))
    got = model.primary_capsules(images)
    assert torch.allclose(got, expected, atol=1e-5)


def test_the_kept_spectrum_follows_every_weight_change():
    torch.manual_seed(0)
    model = spectral.install(CapsNet())
    images = torch.rand(2, 1, 28, 28)
    weight = model.primary.conv.weight

    def check() -> None:
        with torch.no_grad():
            got = model.primary_capsules(images)
            assert torch.allclose(got, model.primary(F.relu(model.conv1(images))), atol=1e-5)

    check()
    model.primary_capsules(images).sum().backward()
    torch.optim.Adam(model.parameters()).step()  # an in-place update
    check()
    model.load_state_dict(CapsNet().state_dict())  # a loaded checkpoint
    check()
    weight.data.mul_(0.5)  # a write that autograd does not count
    check()


INFERENCE_THEN_TRAINING = """
import torch
from capsnet import spectral
from capsnet.model import CapsNet
model = spectral.install(CapsNet())
images, labels = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
first, second = {orders}
def forward(mode):
    if mode == "inference":
        with torch.inference_mode():
            return model(images).lengths.clone()
    model.zero_grad()
    output = model(images, labels)
    (output.lengths.sum() + output.reconstructions.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    return output.lengths.detach()
a, b = forward(first), forward(second)
assert torch.allclose(a, b, atol=1e-6), (a, b)
print("ok")
"""


@pytest.mark.parametrize("orders", ['"inference", "training"', '"training", "inference"'])
def test_the_cached_transforms_serve_training_and_inference_in_either_order(orders):
    """A fresh process each: the DFT matrices are cached on first use, in whichever mode."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", INFERENCE_THEN_TRAINING.format(orders=orders)],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_model_is_the_papers_layers_and_the_kernels_are_swapped_in_by_the_builder():
    import copy

    from capsnet.networks import MODELS
    torch.manual_seed(0)
    plain = CapsNet(conv1_channels=16, primary_types=4)
    built = MODELS["capsnet"].make(conv1_channels=16, primary_types=4)
    built.load_state_dict(plain.state_dict())
    images = torch.rand(3, 1, 28, 28)
    calls = []
    original = spectral.conv1_primary
    spectral.conv1_primary = lambda *args: calls.append(1) or original(*args)
    try:
        assert torch.allclose(built.primary_capsules(images), plain.primary_capsules(images),
                              atol=1e-5)
        assert len(calls) == 1  # the builder's model took the kernel; the plain one did not
        twin = copy.deepcopy(built)
        with torch.no_grad():
            twin.conv1.weight.mul_(2)
        assert not torch.allclose(twin.primary_capsules(images), built.primary_capsules(images))
    finally:
        spectral.conv1_primary = original


def test_bf16_on_the_cpu_runs_the_spectral_path_and_agrees_with_fp32():
    """Under CPU autocast the spectral products run in bf16; the capsule lengths stay within 3%
    of the largest (the bench's probe bound), and the weights get finite gradients."""
    from capsnet.networks import MODELS
    torch.manual_seed(0)
    model = MODELS["capsnet"].make()
    images, labels = torch.rand(8, 1, 28, 28), torch.arange(8)
    calls = []
    original = spectral.primary_conv
    spectral.primary_conv = lambda phases, *rest: calls.append(phases.dtype) or original(phases, *rest)
    try:
        with torch.no_grad():
            fp32 = model(images).lengths
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(images, labels)
    finally:
        spectral.primary_conv = original
    assert calls == [torch.float32, torch.bfloat16]
    assert output.lengths.dtype == torch.float32  # routing in float32
    assert (output.lengths - fp32).abs().max() <= 0.03 * fp32.max()
    (output.lengths.sum() + output.reconstructions.float().sum()).backward()
    assert model.primary.conv.weight.grad.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_kept_spectrum_is_kept_apart_for_bf16_and_fp32():
    torch.manual_seed(0)
    model = spectral.install(CapsNet(conv1_channels=16, primary_types=4))
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = model.primary(F.relu(model.conv1(images)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.primary_capsules(images)  # keeps a bf16 spectrum
        assert torch.allclose(model.primary_capsules(images), expected, atol=1e-5)
