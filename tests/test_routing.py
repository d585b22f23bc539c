"""The routings of capsnet.routing: each against its equations written out on a small case, the
network's dynamic routing against Procedure 1 as written (capsnet.dynamic_routing), and how the
setting reaches the model, its checkpoints and its flags."""
import copy
import itertools
import math

import pytest
import torch

from capsnet import dynamic_routing, squash
from capsnet.model import CapsNet
from capsnet.routing import ROUTINGS, Shape
from capsnet.routing.dynamic import procedure_1
from capsnet.routing.em import em_procedure, em_routing

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
def test_the_networks_procedure_1_equals_the_written_one_with_its_gradients_in_float64(
        iterations, detach, bias, leaky):
    g = torch.Generator().manual_seed(iterations)
    u_hat = torch.randn(3, 4, 25, 6, dtype=torch.float64, generator=g)  # (B, out, in, dim)
    b = torch.randn(4, 6, dtype=torch.float64, generator=g) if bias else None
    expected = routed(dynamic_routing, u_hat, iterations, detach, b, leaky)
    got = routed(procedure_1, u_hat, iterations, detach, b, leaky)
    for a, e in zip(got, expected):
        assert a.shape == e.shape and torch.allclose(a, e, rtol=0, atol=1e-12)


def test_the_networks_procedure_1_equals_the_written_one_in_float32_at_the_papers_size():
    torch.manual_seed(0)
    u_hat = 0.05 * torch.randn(8, 10, 1152, 16)
    expected = routed(dynamic_routing, u_hat, 3, False, None, False)
    got = routed(procedure_1, u_hat, 3, False, None, False)
    for a, e in zip(got, expected):
        assert torch.allclose(a, e, rtol=1e-4, atol=1e-5)


def em_outputs_and_gradients(route, votes, activations, beta_u, beta_a, iterations):
    inputs = [t.clone().requires_grad_() for t in (votes, activations, beta_u, beta_a)]
    routed = route(*inputs, iterations)
    out = (routed.poses, routed.scores, routed.coupling)
    g = torch.Generator().manual_seed(1)
    loss = sum((x * torch.randn(x.shape, dtype=torch.float64, generator=g).to(x.dtype)).sum()
               for x in out)
    loss.backward()
    return [*out, *(t.grad for t in inputs)]


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_the_networks_em_routing_equals_the_written_one_with_its_gradients_in_float64(
        iterations):
    g = torch.Generator().manual_seed(iterations)
    votes = 0.3 * torch.randn(3, 4, 25, 6, dtype=torch.float64, generator=g)
    activations = torch.rand(3, 25, dtype=torch.float64, generator=g)
    betas = 0.1 * torch.randn(2, 4, dtype=torch.float64, generator=g)
    expected = em_outputs_and_gradients(em_routing, votes, activations, *betas, iterations)
    got = em_outputs_and_gradients(em_procedure, votes, activations, *betas, iterations)
    for a, e in zip(got, expected):
        assert a.shape == e.shape and torch.allclose(a, e, rtol=0, atol=1e-12)
        assert e.abs().max() > 0


def test_the_networks_em_routing_equals_the_written_one_in_float32_at_the_papers_size():
    torch.manual_seed(0)
    votes, activations = 0.01 * torch.randn(4, 10, 1152, 16), torch.rand(4, 1152)
    betas = ROUTINGS["em"].make(Shape(1152, 10, 16, 3)).beta_u.detach(), torch.full((10,), -0.77)
    expected = em_outputs_and_gradients(em_routing, votes, activations, *betas, 3)
    got = em_outputs_and_gradients(em_procedure, votes, activations, *betas, 3)
    for a, e in zip(got, expected):
        assert torch.allclose(a, e, rtol=1e-3, atol=1e-5 * e.abs().max().item())


@pytest.mark.parametrize("route", [em_routing, em_procedure])
def test_em_routing_of_votes_equal_in_a_dimension_stays_finite_with_its_gradients(route):
    """The votes' spread in a dimension is zero (a blank image, dead capsules): no 0/0."""
    g = torch.Generator().manual_seed(0)
    votes = 0.3 * torch.randn(2, 4, 25, 6, generator=g)
    votes[..., 2] = 0.5  # every vote the same in dimension 2
    activations, betas = torch.rand(2, 25, generator=g), torch.zeros(2, 4)
    for value in em_outputs_and_gradients(route, votes, activations, *betas, 3):
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("name", sorted(ROUTINGS))
def test_every_routing_stays_in_float32_under_bf16_autocast(name):
    torch.manual_seed(0)
    u_hat = torch.randn(2, 10, 64, 16).bfloat16()
    activations = torch.rand(2, 64)
    layer = ROUTINGS[name].make(Shape(64, 10, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(u_hat, activations.bfloat16())
    assert all(t.dtype == torch.float32 for t in out if t is not None)
    assert (out.logits is not None) == ROUTINGS[name].logits
    reference = layer(u_hat.float(), activations.bfloat16().float())
    assert torch.allclose(out.poses, reference.poses, atol=1e-6)


# A small case, two classes and three input capsules of dimension 2, written out per routing.
U_HAT = torch.tensor([[[[1.0, 0.0], [0.5, 0.5], [-0.2, 0.3]],
                       [[0.0, 1.0], [0.4, -0.1], [0.3, 0.3]]]], dtype=torch.float64)  # (1, j, i, d)


def norm(x):
    return math.sqrt(sum(a * a for a in x))


def squash_list(s):
    n2 = sum(a * a for a in s)
    return [n2 / (1 + n2) * a / math.sqrt(n2 + 1e-8) for a in s]


def test_dynamic_routing_follows_procedure_1_on_a_small_case():
    u = U_HAT[0].tolist()  # u[j][i]: the vote of input capsule i for class j
    b = [[0.0] * 3 for _ in range(2)]
    for iteration in range(3):
        c = [[math.exp(b[j][i]) / sum(math.exp(b[k][i]) for k in range(2)) for i in range(3)]
             for j in range(2)]
        v = [squash_list([sum(c[j][i] * u[j][i][d] for i in range(3)) for d in range(2)])
             for j in range(2)]
        if iteration < 2:
            b = [[b[j][i] + sum(u[j][i][d] * v[j][d] for d in range(2)) for i in range(3)]
                 for j in range(2)]
    out = ROUTINGS["dynamic"].make(Shape(3, 2, 2, 3))(U_HAT, torch.ones(1, 3))
    assert torch.allclose(out.poses[0], torch.tensor(v, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.coupling[0], torch.tensor(c, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.scores[0], torch.tensor([norm(x) for x in v],
                                                      dtype=torch.float64), atol=1e-12)


def test_self_attention_routing_follows_its_equations_on_a_small_case():
    u = U_HAT[0].tolist()
    layer = ROUTINGS["self-attention"].make(Shape(3, 2, 2)).double()
    with torch.no_grad():
        layer.prior.copy_(torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, 0.05]]))
    prior = layer.prior.tolist()
    # A_j[i, k] = u_j|i . u_j|k / sqrt(2); c_ij = softmax over j of sum_k A_j[i, k]
    a = [[sum(sum(u[j][i][d] * u[j][k][d] for d in range(2)) for k in range(3)) / math.sqrt(2)
          for i in range(3)] for j in range(2)]
    c = [[math.exp(a[j][i]) / sum(math.exp(a[k][i]) for k in range(2)) + prior[j][i]
          for i in range(3)] for j in range(2)]
    v = [squash_list([sum(c[j][i] * u[j][i][d] for i in range(3)) for d in range(2)])
         for j in range(2)]
    out = layer(U_HAT, torch.ones(1, 3))
    assert torch.allclose(out.poses[0], torch.tensor(v, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.coupling[0], torch.tensor(c, dtype=torch.float64), atol=1e-12)
    (out.scores.sum() + out.coupling.sum()).backward()
    assert torch.isfinite(layer.prior.grad).all() and layer.prior.grad.abs().sum() > 0


def test_attention_routing_follows_its_equations_on_a_small_case():
    u = U_HAT[0].tolist()
    layer = ROUTINGS["attention"].make(Shape(3, 2, 2, 3)).double()
    with torch.no_grad():
        layer.norm.weight.copy_(torch.tensor([1.5, 0.5]))
        layer.norm.bias.copy_(torch.tensor([0.1, -0.2]))
    gain, shift = layer.norm.weight.tolist(), layer.norm.bias.tolist()
    w, b = layer.score.weight[0].tolist(), layer.score.bias.item()

    def layer_norm(s):
        mean = sum(s) / len(s)
        var = sum((x - mean) ** 2 for x in s) / len(s)
        return [g * (x - mean) / math.sqrt(var + 1e-5) + h for x, g, h in zip(s, gain, shift)]
    c = [[0.5] * 3 for _ in range(2)]  # the first iteration couples uniformly
    v: list = []
    for iteration in range(3):
        if iteration > 0:
            a = [[sum(u[j][i][d] * v[j][d] for d in range(2)) / math.sqrt(2) for i in range(3)]
                 for j in range(2)]
            c = [[math.exp(a[j][i]) / sum(math.exp(a[k][i]) for k in range(2)) for i in range(3)]
                 for j in range(2)]
        v = [layer_norm([sum(c[j][i] * u[j][i][d] for i in range(3)) for d in range(2)])
             for j in range(2)]
    scores = [1 / (1 + math.exp(-(sum(wd * vd for wd, vd in zip(w, v[j])) + b))) for j in range(2)]
    out = layer(U_HAT, torch.ones(1, 3))
    assert torch.allclose(out.poses[0], torch.tensor(v, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(out.coupling[0], torch.tensor(c, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.scores[0], torch.tensor(scores, dtype=torch.float64), atol=1e-10)
    assert math.isclose(b, math.log(0.1 / 0.9), abs_tol=1e-6)  # every score starts near m- = 0.1


def test_em_routing_follows_procedure_1_of_matrix_capsules_on_a_small_case():
    u = U_HAT[0].tolist()
    a = [0.9, 0.5, 0.2]  # the input activations a_i
    layer = ROUTINGS["em"].make(Shape(3, 2, 2, 3)).double()
    with torch.no_grad():
        layer.beta_u.copy_(torch.tensor([0.2, -0.1]))
        layer.beta_a.copy_(torch.tensor([0.3, 0.1]))
    beta_u, beta_a = layer.beta_u.tolist(), layer.beta_a.tolist()
    # sigma^h: the spread of all the votes, each weighted by its a_i
    weights = [a[i] / (2 * sum(a)) for i in range(3)]
    centre = [sum(weights[i] * u[j][i][h] for j in range(2) for i in range(3)) for h in range(2)]
    spread = [sum(weights[i] * (u[j][i][h] - centre[h]) ** 2 for j in range(2) for i in range(3))
              for h in range(2)]
    r = [[0.5] * 3 for _ in range(2)]
    for t in (1, 2, 3):
        lam = 20 * (1 - 0.95 ** t)
        rr = [[r[j][i] * a[i] for i in range(3)] for j in range(2)]
        total = [sum(rr[j]) for j in range(2)]
        mu = [[sum(rr[j][i] * u[j][i][h] for i in range(3)) / total[j] for h in range(2)]
              for j in range(2)]
        var = [[sum(rr[j][i] * (u[j][i][h] - mu[j][h]) ** 2 for i in range(3)) / total[j]
                + 1e-4 * spread[h] for h in range(2)] for j in range(2)]
        cost = [(beta_u[j] + sum(0.5 * math.log(var[j][h] / spread[h]) for h in range(2)) / 2)
                * total[j] / (sum(total) / 2) for j in range(2)]
        act = [1 / (1 + math.exp(-lam * (beta_a[j] - cost[j]))) for j in range(2)]
        if t < 3:
            p = [[math.prod(math.exp(-(u[j][i][h] - mu[j][h]) ** 2 / (2 * var[j][h]))
                            / math.sqrt(2 * math.pi * var[j][h]) for h in range(2))
                  for i in range(3)] for j in range(2)]
            r = [[act[j] * p[j][i] / sum(act[k] * p[k][i] for k in range(2)) for i in range(3)]
                 for j in range(2)]
    out = layer(U_HAT, torch.tensor([a], dtype=torch.float64))
    assert torch.allclose(out.poses[0], torch.tensor(mu, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(out.scores[0], torch.tensor(act, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(out.coupling[0], torch.tensor(r, dtype=torch.float64), atol=1e-10)
    assert not torch.allclose(out.coupling[0], torch.full((2, 3), 0.5, dtype=torch.float64))
    fresh = ROUTINGS["em"].make(Shape(3, 2, 2, 3))  # every a_j starts near 0.1 while costs are small
    assert torch.allclose(torch.sigmoid(2.8524 * fresh.beta_a), torch.tensor(0.1), atol=1e-3)


def test_uniform_routing_is_one_iteration_of_dynamic_routing():
    torch.manual_seed(0)
    u_hat = torch.randn(2, 10, 30, 16)
    bias = torch.randn(10, 16)
    out = ROUTINGS["uniform"].make(Shape(30, 10, 16))(u_hat, torch.rand(2, 30), bias)
    v, c = dynamic_routing(u_hat, 1, bias=bias)
    assert torch.allclose(out.poses, v, atol=1e-6) and torch.allclose(out.coupling, c)
    assert torch.allclose(out.coupling, torch.full((2, 10, 30), 0.1))
    assert torch.allclose(out.poses[0, 0], squash(u_hat[0, 0].sum(0) / 10 + bias[0]), atol=1e-6)


def authors_capsule_fc(primary: torch.Tensor, w: torch.Tensor, layer_norm, num_routing: int
                       ) -> torch.Tensor:
    """Tsai et al.'s CapsuleFC (vector poses) as their code computes it, written out here:
    primary (b, n, a) poses, w (n, a, m, d); the first pass couples uniformly, then each of
    num_routing - 1 passes re-couples by softmax over m of the votes' agreement with the
    current poses, scaled by 1/sqrt(d); LayerNorm after every pass."""
    n, _, m, d = w.shape
    coupling = torch.full((n, m), 1.0 / m, dtype=w.dtype)
    poses = layer_norm(torch.einsum("nm,bna,namd->bmd", coupling, primary, w))
    for _ in range(num_routing - 1):
        agreement = torch.einsum("bna,namd,bmd->bnm", primary, w, poses) / math.sqrt(d)
        coupling = agreement.softmax(dim=2)
        poses = layer_norm(torch.einsum("bnm,bna,namd->bmd", coupling, primary, w))
    return poses


def test_attention_routing_in_its_authors_form_is_their_model_and_loss():
    """--routing attention --primary-norm layer-norm --score-loss cross-entropy
    --reconstruction-weight 0 against the authors' pipeline: conv output -> capsules of 4
    channels -> LayerNorm -> CapsuleFC -> one shared linear layer -> cross-entropy."""
    import torch.nn.functional as F

    from capsnet.loss import CapsuleLoss
    torch.manual_seed(0)
    model = CapsNet(conv1_channels=8, primary_types=2, primary_dim=4, class_dim=4,
                    routing="attention", primary_norm="layer-norm").double()
    with torch.no_grad():  # gains and biases away from their initial 1 and 0
        for norm in (model.primary.layer_norm, model.digits.routing.norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    images = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    labels = torch.tensor([4, 0, 7])
    out = model(images, labels)

    conv = model.primary.conv(F.relu(model.conv1(images)))  # (b, types*dim, 6, 6)
    u = conv.permute(0, 2, 3, 1).reshape(3, 6, 6, 2, 4).permute(0, 3, 1, 2, 4)  # (b, t, 6, 6, a)
    primary = model.primary.layer_norm(u).permute(0, 4, 1, 2, 3).reshape(3, 4, -1)
    primary = primary.permute(0, 2, 1)  # (b, n, a): n by type, row, column
    w = model.digits.weight.permute(0, 3, 1, 2)  # ours (n, m, d, a) -> theirs (n, a, m, d)
    poses = authors_capsule_fc(primary, w, model.digits.routing.norm, 3)
    logits = model.digits.routing.score(poses).squeeze(-1)  # their final_fc
    assert torch.allclose(out.poses, poses, atol=1e-10)
    assert torch.allclose(out.logits, logits, atol=1e-10)
    assert torch.equal(out.scores.argmax(dim=1), logits.argmax(dim=1))
    loss = CapsuleLoss(reconstruction_weight=0.0, logits=True)(images, labels, out)
    assert torch.allclose(loss, F.cross_entropy(logits, labels), atol=1e-12)
    # their W_ij start at N(0, classes / (in_dim in_caps)); the other routings' at N(0, 0.01^2)
    big = CapsNet(routing="attention").digits.weight
    assert abs(big.std().item() - math.sqrt(10 / (8 * 1152))) < 0.001
    assert abs(CapsNet().digits.weight.std().item() - 0.01) < 0.0005


def test_the_cross_entropy_sums_over_every_class_present():
    from capsnet.loss import cross_entropy
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    log_p = logits.log_softmax(dim=1)
    assert torch.allclose(cross_entropy(logits, torch.tensor([0, 2])),
                          -torch.stack([log_p[0, 0], log_p[1, 2]]))
    assert torch.allclose(cross_entropy(logits, torch.tensor([[0, 1], [1, 2]])),
                          -torch.stack([log_p[0, 0] + log_p[0, 1], log_p[1, 1] + log_p[1, 2]]))


@pytest.mark.parametrize("name", sorted(ROUTINGS))
def test_every_routing_trains_in_the_network_with_finite_gradients(name):
    torch.manual_seed(0)
    model = CapsNet(conv1_channels=16, primary_types=4, routing=name)
    out = model(torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3]))
    assert out.scores.shape == (3, 10) and out.coupling.shape == (3, 10, 4 * 6 * 6)
    assert ((0 <= out.scores) & (out.scores <= 1)).all()
    # every routing couples each primary capsule to the classes with weights summing to 1 (the
    # self-attention prior b_ij starts at zero)
    assert torch.allclose(out.coupling.sum(dim=1), torch.ones(3, 4 * 6 * 6), atol=1e-5)
    (out.scores.sum() + out.reconstructions.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    twin = copy.deepcopy(model)
    assert torch.equal(twin(torch.ones(1, 1, 28, 28)).scores, model(torch.ones(1, 1, 28, 28)).scores)


def test_the_routing_flag_lists_its_choices_and_refuses_options_of_another_in_one_line(
        quick_args, capsys):
    import train

    from conftest import run_main
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "{dynamic,self-attention,uniform,em,attention}" in capsys.readouterr().out
    for given, expected in ((["--routing", "uniform", "--leaky-routing"],
                             "--leaky-routing does not apply to --routing uniform"),
                            (["--routing", "self-attention", "--routing-iterations", "2"],
                             "--routing-iterations does not apply to --routing self-attention"),
                            (["--routing", "uniform", "--detach-routing"],
                             "--detach-routing does not apply to --routing uniform"),
                            (["--routing", "attention", "--detach-routing"],
                             "--detach-routing does not apply to --routing attention"),
                            (["--routing", "attention", "--digit-bias"],
                             "--digit-bias does not apply to --routing attention"),
                            (["--routing", "attention", "--recipe", "official"],
                             "--recipe official does not apply to --routing attention"),
                            (["--routing", "em", "--leaky-routing"],
                             "--leaky-routing does not apply to --routing em"),
                            (["--routing", "em", "--detach-routing"],
                             "--detach-routing does not apply to --routing em"),
                            (["--routing", "em", "--digit-bias"],
                             "--digit-bias does not apply to --routing em"),
                            (["--routing", "em", "--recipe", "official"],
                             "--recipe official does not apply to --routing em"),
                            (["--score-loss", "spread", "--m-plus", "0.8"],
                             "--m-plus does not apply to --score-loss spread"),
                            (["--model", "baseline", "--score-loss", "spread"],
                             "--score-loss spread does not apply to --model baseline"),
                            (["--score-loss", "cross-entropy"],
                             "--score-loss cross-entropy needs class logits, which --routing "
                             "dynamic has not"),
                            (["--routing", "em", "--primary-norm", "layer-norm"],
                             "--primary-norm layer-norm does not apply to --routing em")):
        code, err = run_main([*quick_args, *given], capsys)
        assert code == 2 and expected in err and len(err.splitlines()) == 1


def test_a_checkpoint_is_refused_by_another_routing_and_one_without_the_setting_is_dynamic(
        tiny_checkpoints, data_root, tmp_path, capsys):
    import shutil

    from conftest import run_main
    from capsnet.run.storage import load_checkpoint, save_checkpoint
    path = tmp_path / "last.pt"
    shutil.copy(tiny_checkpoints["capsnet"], path)
    data = ["--data-dir", str(data_root), "--no-download", "--no-visdom"]
    code, err = run_main(["--eval", str(path), "--routing", "uniform", *data], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "does not fit this dataset and config (routing: saved dynamic, now uniform)" in err
    checkpoint = load_checkpoint(path)  # as saved before --routing existed
    checkpoint.pop("digest", None)
    del checkpoint["config"]["routing"], checkpoint["model_args"]["routing"]
    save_checkpoint(path, checkpoint)
    code, err = run_main(["--eval", str(path), *data], capsys)
    assert code == 0, err


AUTHORS_ATTENTION = ["--primary-norm", "layer-norm", "--reconstruction-weight", "0"]


@pytest.mark.parametrize("name,loss,more", [  # the routings with parameters
    ("self-attention", "margin", []), ("attention", "cross-entropy", AUTHORS_ATTENTION),
    ("em", "spread", [])])
def test_a_run_of_another_routing_trains_and_its_checkpoint_evaluates(name, loss, more,
                                                                       quick_args, capsys):
    from conftest import run_main
    from capsnet.run.storage import load_checkpoint
    code, err = run_main([*quick_args, "--routing", name, "--score-loss", loss, *more], capsys)
    assert code == 0, err
    run = quick_args[quick_args.index("--run-dir") + 1]
    checkpoint = load_checkpoint(f"{run}/last.pt")
    assert checkpoint["config"]["routing"] == checkpoint["model_args"]["routing"] == name
    assert ("digits.routing.prior" in checkpoint["model"]) == (name == "self-attention")
    assert ("digits.routing.score.weight" in checkpoint["model"]) == (name == "attention")
    assert ("digits.routing.beta_a" in checkpoint["model"]) == (name == "em")
    assert ("primary.layer_norm.weight" in checkpoint["model"]) == bool(more)
    assert checkpoint["config"]["score_loss"] == loss
    code, err = run_main(["--eval", f"{run}/last.pt", *quick_args[:3], "--no-visdom"], capsys)
    assert code == 0, err
