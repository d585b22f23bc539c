import pytest
import torch
import torch.nn.functional as F
from torch import nn

from capsnet import spectral
from capsnet.model import CapsNet


def direct(images: torch.Tensor, conv1: nn.Conv2d, conv2: nn.Conv2d) -> torch.Tensor:
    return conv2(F.relu(conv1(images))).permute(0, 2, 3, 1)  # (B, H, W, O)


def fast_capsules(model: CapsNet, images: torch.Tensor) -> torch.Tensor:
    """The primary capsules as CapsNet.forward makes them with fast_kernels on the CPU."""
    return model.primary.capsules(spectral.conv1_primary(images, model.conv1, model.primary.conv,
                                                         model.kept_spectrum))


def plain_capsules(model: CapsNet, images: torch.Tensor) -> torch.Tensor:
    """The primary capsules as written: PrimaryCapsules.forward of conv1's features."""
    return model.primary(F.relu(model.conv1(images)))


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


def test_the_transforms_are_exactly_zero_where_their_sines_and_cosines_vanish():
    """sin(pi) rounds to 1e-16, not 0: met by a gradient's smallest values in a product, such an
    entry makes denormal numbers, which the CPU computes many times slower."""
    for dtype in (torch.float32, torch.float64):
        for matrix in spectral.transforms(10, 5, 6, dtype):
            assert matrix[matrix != 0].abs().min() > 1e-4
    forward = spectral.transforms(10, 5, 6, torch.float64)[0]  # rows: (frequency, re/im)
    assert int((forward[1::2] == 0).all(dim=1).sum()) == 4  # the real frequencies' sines


def test_capsnet_on_the_cpu_matches_plain_convolutions_in_float32():
    torch.manual_seed(0)
    model = CapsNet()
    images = torch.rand(4, 1, 28, 28)
    assert torch.allclose(fast_capsules(model, images), plain_capsules(model, images), atol=1e-5)


@pytest.mark.parametrize("routing", ["dynamic", "em"])
def test_capsnet_with_fast_kernels_equals_capsnet_without_them_with_gradients(routing):
    """The whole network, fp32: the same outputs and the same gradients of every weight."""
    torch.manual_seed(0)
    fast = CapsNet(conv1_channels=16, primary_types=4, routing=routing)
    plain = CapsNet(conv1_channels=16, primary_types=4, routing=routing, fast_kernels=False)
    plain.load_state_dict(fast.state_dict())
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 3, 9])
    grads = []
    for model in (fast, plain):
        output = model(images, labels)
        (output.scores.square().sum() + output.reconstructions.sum()).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(fast(images), plain(images)):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(*grads):  # to 0.1% of each gradient's largest entry
        assert (a - b).abs().max() <= 1e-3 * b.abs().max()


def test_the_kept_spectrum_follows_every_weight_change():
    torch.manual_seed(0)
    model = CapsNet()
    images = torch.rand(2, 1, 28, 28)
    weight = model.primary.conv.weight

    def check() -> None:
        with torch.no_grad():
            assert torch.allclose(fast_capsules(model, images), plain_capsules(model, images),
                                  atol=1e-5)

    check()
    fast_capsules(model, images).sum().backward()
    torch.optim.Adam(model.parameters()).step()  # an in-place update
    check()
    model.load_state_dict(CapsNet().state_dict())  # a loaded checkpoint
    check()
    weight.data.mul_(0.5)  # a write that autograd does not count
    check()


INFERENCE_THEN_TRAINING = """
import torch
from capsnet.model import CapsNet
model = CapsNet()
images, labels = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
first, second = {orders}
def forward(mode):
    if mode == "inference":
        with torch.inference_mode():
            return model(images).scores.clone()
    model.zero_grad()
    output = model(images, labels)
    (output.scores.sum() + output.reconstructions.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    return output.scores.detach()
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


def test_bf16_on_the_cpu_runs_the_spectral_path_and_agrees_with_fp32():
    """Under CPU autocast the spectral products run in bf16; the capsule lengths stay within 3%
    of the largest (the bench's probe bound), and the weights get finite gradients."""
    torch.manual_seed(0)
    model = CapsNet()
    images, labels = torch.rand(8, 1, 28, 28), torch.arange(8)
    calls = []
    original = spectral.primary_conv
    spectral.primary_conv = lambda phases, *rest: calls.append(phases.dtype) or original(phases, *rest)
    try:
        with torch.no_grad():
            fp32 = model(images).scores
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(images, labels)
    finally:
        spectral.primary_conv = original
    assert calls == [torch.float32, torch.bfloat16]
    assert output.scores.dtype == torch.float32  # routing in float32
    assert (output.scores - fp32).abs().max() <= 0.03 * fp32.max()
    (output.scores.sum() + output.reconstructions.float().sum()).backward()
    assert model.primary.conv.weight.grad.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_kept_spectrum_is_kept_apart_for_bf16_and_fp32():
    torch.manual_seed(0)
    model = CapsNet(conv1_channels=16, primary_types=4)
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = plain_capsules(model, images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_capsules(model, images)  # keeps a bf16 spectrum
        assert torch.allclose(fast_capsules(model, images), expected, atol=1e-5)


def test_the_model_keeps_its_spectrum_between_evaluation_batches_and_nowhere_else(monkeypatch):
    made = []
    kernel_spectrum = spectral.kernel_spectrum
    monkeypatch.setattr(spectral, "kernel_spectrum", lambda *a: made.append(1) or kernel_spectrum(*a))
    model = CapsNet(conv1_channels=16, primary_types=4)
    keys = set(model.state_dict())
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        model(images)
        model(images)
    assert len(made) == 1 and model.kept_spectrum.spectrum is not None
    assert set(model.state_dict()) == keys  # not a buffer: no checkpoint holds it
    model(images, torch.tensor([1, 2]))  # a pass with gradients drops it
    assert len(made) == 2 and model.kept_spectrum.spectrum is None
