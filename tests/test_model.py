import torch
import torch.nn.functional as F

from capsnet import CapsNet, dynamic_routing, squash
from capsnet.model import DigitCapsules, PrimaryCapsules


def test_output_shapes_and_range():
    torch.manual_seed(0)
    model = CapsNet()
    images = torch.rand(3, 1, 28, 28)
    out = model(images, torch.tensor([1, 2, 3]))
    assert out.scores.shape == (3, 10)
    assert out.poses.shape == (3, 10, 16)
    assert out.reconstructions.shape == images.shape
    assert 0 <= out.reconstructions.min() and out.reconstructions.max() <= 1
    assert torch.allclose(out.scores, out.poses.norm(dim=-1))
    assert (out.scores < 1).all()


def test_batch_of_one_trains():
    model = CapsNet()
    out = model(torch.rand(1, 1, 28, 28), torch.tensor([4]))
    assert out.scores.shape == (1, 10) and out.reconstructions.shape == (1, 1, 28, 28)
    out.scores.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_shapes_follow_the_dataset():
    out = CapsNet(in_channels=3, image_size=32, num_classes=5)(torch.rand(2, 3, 32, 32))
    assert out.scores.shape == (2, 5) and out.reconstructions.shape == (2, 3, 32, 32)


def test_parameter_count_matches_the_paper():
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(CapsNet()) == 8_215_568
    assert count(CapsNet(digit_bias=True)) == 8_215_568 + 160


def test_squash_shrinks_and_keeps_direction():
    s = torch.tensor([[3.0, 4.0], [0.3, 0.4], [-1.0, 0.0]])
    v = squash(s)
    norms = s.norm(dim=-1)
    assert torch.allclose(v.norm(dim=-1), norms ** 2 / (1 + norms ** 2), atol=1e-6)
    assert (v.norm(dim=-1) < 1).all() and (v.norm(dim=-1) <= norms).all()
    assert torch.allclose(F.cosine_similarity(v, s, dim=-1), torch.ones(3))


def test_squash_has_a_finite_gradient_at_zero():
    s = torch.zeros(2, 8, requires_grad=True)
    squash(s).sum().backward()
    assert torch.isfinite(s.grad).all()
    assert torch.equal(squash(torch.zeros(4)), torch.zeros(4))


def test_coupling_sums_to_one_over_output_capsules():
    u_hat = torch.randn(2, 10, 50, 16)  # (B, out_caps, in_caps, out_dim)
    _, coupling = dynamic_routing(u_hat, 3)
    assert coupling.shape == (2, 10, 50)
    assert torch.allclose(coupling.sum(dim=1), torch.ones(2, 50), atol=1e-6)
    assert not torch.allclose(coupling.sum(dim=2), torch.ones(2, 10))


def test_agreement_raises_coupling_toward_the_agreeing_class():
    torch.manual_seed(0)
    u_hat = 0.05 * torch.randn(1, 10, 64, 16)
    u_hat[:, 3] = torch.ones(16) * 0.5  # every input capsule predicts the same pose for class 3
    _, first = dynamic_routing(u_hat, 1)
    _, routed = dynamic_routing(u_hat, 3)
    assert torch.allclose(first, torch.full_like(first, 0.1))  # b_ij starts at zero
    assert (routed[0, 3] > 0.5).all()
    assert (routed[0, 3] > routed[0, torch.arange(10) != 3].max(dim=0).values).all()


def test_each_example_is_routed_on_its_own():
    torch.manual_seed(0)
    u_hat = torch.randn(4, 10, 30, 16)
    v_batch, c_batch = dynamic_routing(u_hat, 3)
    for k in range(4):
        v_one, c_one = dynamic_routing(u_hat[k:k + 1], 3)
        assert torch.allclose(v_batch[k:k + 1], v_one, atol=1e-6)
        assert torch.allclose(c_batch[k:k + 1], c_one, atol=1e-6)


def test_digit_capsules_match_a_loop_over_w_ij():
    torch.manual_seed(0)
    layer = DigitCapsules(in_caps=6, in_dim=8, out_caps=3, out_dim=4, iterations=2)
    u = torch.randn(2, 6, 8)
    u_hat = torch.stack([torch.stack([torch.stack([layer.weight[i, j] @ u[b, i] for i in range(6)])
                                      for j in range(3)]) for b in range(2)])  # (B, j, i, d)
    expected, coupling = dynamic_routing(u_hat, 2)
    got = layer(u)
    assert torch.allclose(got.poses, expected, atol=1e-6)
    assert torch.allclose(got.scores, expected.norm(dim=-1), atol=1e-6)
    assert torch.allclose(got.coupling, coupling, atol=1e-6)


def test_primary_capsules_group_channels_of_one_type_at_one_position():
    torch.manual_seed(0)
    layer = PrimaryCapsules(in_channels=4, types=3, dim=8, kernel_size=3, stride=2)
    x = torch.randn(2, 4, 9, 9)
    conv = layer.conv(x)  # (2, 24, 4, 4)
    u = layer(x)
    assert u.shape == (2, 3 * 4 * 4, 8)
    for t, row, col in [(0, 0, 0), (1, 2, 3), (2, 3, 1)]:
        index = t * 16 + row * 4 + col
        expected = squash(conv[:, t * 8:(t + 1) * 8, row, col])
        assert torch.allclose(u[:, index], expected, atol=1e-6)


def test_decoder_is_masked_by_labels_in_training_and_by_prediction_otherwise():
    torch.manual_seed(0)
    model = CapsNet()
    images = torch.rand(2, 1, 28, 28)
    predicted = model(images).scores.argmax(dim=1)
    other = (predicted + 1) % 10
    by_prediction = model(images).reconstructions
    assert torch.allclose(model(images, predicted).reconstructions, by_prediction)
    assert not torch.allclose(model(images, other).reconstructions, by_prediction)


def test_detach_routing_stops_gradients_through_inner_iterations_only():
    torch.manual_seed(0)
    u_hat = torch.randn(1, 10, 20, 16, requires_grad=True)

    def grad(iterations: int, detach: bool) -> torch.Tensor:
        return torch.autograd.grad(dynamic_routing(u_hat, iterations, detach)[0].sum(), u_hat)[0]

    full, detached = grad(3, False), grad(3, True)
    assert torch.isfinite(full).all() and torch.isfinite(detached).all()
    assert not torch.allclose(full, detached)
    assert torch.allclose(grad(1, False), grad(1, True))  # one iteration has no inner ones


def test_routing_stays_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    u_hat = torch.randn(4, 10, 1152, 16).bfloat16()  # what bf16 matrix products hand to routing
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, coupling = dynamic_routing(u_hat, 3)
    assert v.dtype == torch.float32 and coupling.dtype == torch.float32
    v_ref, coupling_ref = dynamic_routing(u_hat.float(), 3)  # the same votes, no autocast
    assert torch.allclose(v, v_ref, atol=1e-6) and torch.allclose(coupling, coupling_ref, atol=1e-6)


def test_the_model_runs_in_float64():
    torch.manual_seed(0)
    model = CapsNet().double()
    out = model(torch.rand(2, 1, 28, 28, dtype=torch.float64), torch.tensor([3, 4]))
    assert out.scores.dtype == out.poses.dtype == out.reconstructions.dtype == torch.float64
    out.scores.sum().backward()
    assert model.digits.weight.grad.dtype == torch.float64


def test_official_recipe_primary_pre_activation_is_conv_over_32_plus_bias():
    torch.manual_seed(0)
    model = CapsNet(recipe="official")
    images = torch.rand(2, 1, 28, 28)
    conv = model.primary.conv
    features = F.relu(model.conv1(images))
    pre = (F.conv2d(features, conv.weight, None, stride=2) / 32
           + conv.bias[:, None, None]).permute(0, 2, 3, 1)  # (B, 6, 6, 256)
    expected = squash(pre.reshape(2, 6, 6, 32, 8).permute(0, 3, 1, 2, 4).reshape(2, 1152, 8))
    assert torch.allclose(model.primary(F.relu(model.conv1(images))), expected, atol=1e-6)
    paper = CapsNet(digit_bias=True)
    paper.load_state_dict(model.state_dict())  # the same weights without the 1/32
    assert not torch.allclose(paper.primary(F.relu(paper.conv1(images))), expected, atol=1e-3)


def test_official_recipe_adds_the_digit_bias_before_every_squash():
    torch.manual_seed(0)
    u_hat = torch.randn(2, 10, 30, 16)
    bias = torch.randn(10, 16)
    v, coupling = dynamic_routing(u_hat, 3, bias=bias)
    logits = torch.zeros(2, 10, 30)  # Procedure 1 by hand, bias added before each squash
    for iteration in range(3):
        c = logits.softmax(dim=1)
        v_ref = squash(torch.einsum("bji,bjid->bjd", c, u_hat) + bias)
        if iteration < 2:
            logits = logits + torch.einsum("bjid,bjd->bji", u_hat, v_ref)
    assert torch.allclose(v, v_ref, atol=1e-6) and torch.allclose(coupling, c, atol=1e-6)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(CapsNet(recipe="official")) == count(CapsNet()) + 160
    assert CapsNet(recipe="official").digits.bias is not None


def test_official_recipe_initial_weights():
    torch.manual_seed(0)
    model = CapsNet(recipe="official")
    for layer in (model.decoder.layers[0], model.decoder.layers[2], model.decoder.layers[4]):
        w = layer.weight
        assert w.abs().max() <= 0.2 and 0.07 < w.std() < 0.1  # truncated at 2 std of 0.1
        assert torch.all(layer.bias == 0.1)
    w = model.conv1.weight
    assert w.abs().max() <= 0.1 and 0.035 < w.std() < 0.05
    paper = CapsNet()
    assert paper.decoder.layers[0].weight.abs().max() < 0.1  # PyTorch's default, not the recipe


def test_widths_set_every_layer_and_the_parameter_count():
    model = CapsNet(in_channels=3, image_size=32, conv1_channels=64, primary_types=16,
                    primary_dim=6, class_dim=8)  # the paper's SVHN network
    out = model(torch.rand(2, 3, 32, 32), torch.tensor([1, 2]))
    assert out.poses.shape == (2, 10, 8) and out.coupling.shape == (2, 10, 16 * 8 * 8)
    assert model.primary(F.relu(model.conv1(torch.rand(2, 3, 32, 32)))).shape == (2, 16 * 8 * 8, 6)
    count = sum(p.numel() for p in model.parameters())
    conv1, primary = 3 * 64 * 81 + 64, 64 * 96 * 81 + 96
    digits = 1024 * 10 * 8 * 6
    decoder = (80 * 512 + 512) + (512 * 1024 + 1024) + (1024 * 3072 + 3072)
    assert count == conv1 + primary + digits + decoder == 4_720_480


def test_none_of_the_above_routing_takes_probability_mass():
    torch.manual_seed(0)
    u_hat = torch.randn(2, 10, 30, 16)
    _, first = dynamic_routing(u_hat, 1, leaky=True)  # all logits zero: 1/11 each
    assert torch.allclose(first, torch.full((2, 10, 30), 1 / 11))
    v, coupling = dynamic_routing(u_hat, 3, leaky=True)
    logits = torch.zeros(2, 10, 30)  # Procedure 1 by hand, with an 11th logit fixed at 0
    for iteration in range(3):
        c = torch.cat([logits, torch.zeros(2, 1, 30)], dim=1).softmax(dim=1)[:, :10]
        v_ref = squash(torch.einsum("bji,bjid->bjd", c, u_hat))
        if iteration < 2:
            logits = logits + torch.einsum("bjid,bjd->bji", u_hat, v_ref)
    assert torch.allclose(coupling, c, atol=1e-6) and torch.allclose(v, v_ref, atol=1e-6)
    assert (coupling.sum(dim=1) < 1).all()


def test_17x17_is_the_smallest_image_capsnet_takes():
    import pytest
    model = CapsNet(image_size=17, conv1_channels=8, primary_types=2)
    assert model(torch.rand(2, 1, 17, 17)).scores.shape == (2, 10)
    with pytest.raises(ValueError, match=r"images of 16x16 are too small for CapsNet \(>= 17\)"):
        CapsNet(image_size=16, conv1_channels=8, primary_types=2)
