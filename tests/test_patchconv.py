import torch
import torch.nn.functional as F

from capsnet.model import PrimaryCapsules
from capsnet.patchconv import PatchConv2d


def test_patch_convolution_equals_conv2d_with_its_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 13, 11, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(x, weight, bias, stride=2)
    got = PatchConv2d.apply(x.permute(0, 2, 3, 1), weight, bias, 2).permute(0, 3, 1, 2)
    assert torch.allclose(got, expected)
    grad = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(expected, (x, weight, bias), grad),
                    torch.autograd.grad(got, (x, weight, bias), grad)):
        assert torch.allclose(a, b)
    assert torch.autograd.gradcheck(
        lambda x, w, b: PatchConv2d.apply(x.permute(0, 2, 3, 1), w, b, 3),
        (x[:1, :2, :8, :8].detach().requires_grad_(), weight[:2, :2].detach().requires_grad_(),
         bias[:2].detach().requires_grad_()))


def test_primary_capsules_agree_with_and_without_gradients():
    torch.manual_seed(0)
    layer = PrimaryCapsules()
    x = torch.randn(2, 256, 20, 20)
    with torch.no_grad():
        plain = layer(x)  # oneDNN convolution
    patched = layer(x)  # patch GEMM convolution
    assert torch.allclose(plain, patched, atol=1e-5)
