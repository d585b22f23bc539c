"""Each fast form is checked against the code as written when a model is built for a run: used
where the two agree (to float64 rounding, far inside the tolerance), set aside and said where they
differ, without touching the run's random numbers, weights or modes."""
import csv
import json
import math
import re

import pytest
import torch

import train
from capsnet import kernels
from capsnet.model import CapsNet
from capsnet.routing import dynamic
from capsnet.run.distributed import World
from capsnet.squashing import EPS

from conftest import SMALL_SETTINGS


@pytest.mark.parametrize("args", [
    {},  # the paper's widths
    {**SMALL_SETTINGS, "routing": "em"},
    {**SMALL_SETTINGS, "recipe": "official", "leaky_routing": True},  # a bias, a leaky softmax
    {**SMALL_SETTINGS, "detach_routing": True, "routing_iterations": 4, "primary_dim": 4},
    {**SMALL_SETTINGS, "in_channels": 3, "num_classes": 5, "primary_norm": "layer-norm"},
])
def test_every_fast_form_equals_the_code_as_written_far_inside_the_tolerance(args):
    """The tolerance stands 10^5 times above what float64 rounding leaves between the forms."""
    twin = kernels.twin_of(CapsNet(**args), args)
    for form in kernels.FAST_FORMS:
        outputs, gradients = kernels.compare(form, twin)
        assert outputs < kernels.TOLERANCE / 1e5, form.name
        assert gradients < kernels.TOLERANCE / 1e5, form.name


class Drifting(CapsNet):
    """conv1/PrimaryCaps as written one part in ten million larger than its fast form."""

    def primary_capsules(self, images):
        capsules = super().primary_capsules(images)
        return capsules if self.fast_kernels else capsules * (1 + 1e-7)


def test_forms_one_part_in_ten_million_apart_are_told_apart_and_the_fast_one_set_aside():
    model = Drifting(**SMALL_SETTINGS)
    checked = kernels.checked(model, SMALL_SETTINGS, torch.device("cpu"))
    assert checked.record() == {"conv1_primary": "as written", "routing": "fast"}
    assert not model.fast_kernels and model.digits.routing.fast_kernels
    (line,) = checked.warnings()
    assert line.startswith("fast conv1/PrimaryCaps set aside: spectral.conv1_primary differs "
                           "from conv1, ReLU and PrimaryCapsules.forward as written (outputs "
                           "1e-05% apart); training conv1, ReLU and PrimaryCapsules.forward as "
                           "written (slower).")
    assert "--no-fast-kernels" in line


def test_a_fast_backward_whose_gradients_differ_is_set_aside_though_its_outputs_agree(
        monkeypatch):
    """The routing's hand-written backward pulling back one percent too much."""
    pulled_back = dynamic.pulled_back
    monkeypatch.setattr(dynamic, "pulled_back", lambda *a: 1.01 * pulled_back(*a))
    model = CapsNet(**SMALL_SETTINGS)
    checked = kernels.checked(model, SMALL_SETTINGS, torch.device("cpu"))
    assert checked.record() == {"conv1_primary": "fast", "routing": "as written"}
    assert not model.digits.routing.fast_kernels
    (line,) = checked.warnings()
    assert re.search(r"procedure_1 differs from dynamic_routing as written \(gradients "
                     r"[1-9][.0-9]*% apart\)", line)


def efficient_squash(s, dim=-1):
    """Efficient-CapsNet's squash, (1 - 1/e^|s|) s/|s|."""
    norm = torch.sqrt((s * s).sum(dim=dim, keepdim=True) + EPS)
    return s * ((1 - torch.exp(-norm)) / norm)


def test_the_fast_routing_follows_an_edited_squash_with_the_right_gradients(monkeypatch):
    monkeypatch.setattr(dynamic, "squash", efficient_squash)
    model = CapsNet(**SMALL_SETTINGS)
    assert kernels.checked(model, SMALL_SETTINGS, torch.device("cpu")).record() == {
        "conv1_primary": "fast", "routing": "fast"}
    u_hat = torch.randn(3, 10, 20, 8, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 10, 8, dtype=torch.float64)
    fast = torch.autograd.grad(dynamic.procedure_1(u_hat, 3)[0], u_hat, grad)[0]
    written = torch.autograd.grad(dynamic.dynamic_routing(u_hat, 3)[0], u_hat, grad)[0]
    assert torch.allclose(fast, written, rtol=1e-10, atol=1e-13)


def test_the_check_changes_no_random_number_weight_or_mode():
    torch.manual_seed(3)
    model = CapsNet(**SMALL_SETTINGS)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        kernels.checked(model, SMALL_SETTINGS, torch.device("cpu"))
        assert not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_the_check_runs_at_the_smallest_side_whatever_the_images():
    args = {**SMALL_SETTINGS, "image_size": 96}
    twin = kernels.twin_of(CapsNet(**args), args)
    assert twin.decoder.image_shape == (1, 17, 17) and twin.grid == 1
    assert next(twin.parameters()).dtype == torch.float64


def test_above_64_pixels_conv1_and_primarycaps_run_as_written_and_the_line_says_why():
    """The spectral form's spectra grow with the side: nn.Conv2d is faster above 64x64."""
    wide = CapsNet(**SMALL_SETTINGS, image_size=96)
    checked = kernels.checked(wide, {**SMALL_SETTINGS, "image_size": 96}, torch.device("cpu"))
    assert checked.record() == {"conv1_primary": "as written", "routing": "fast"}
    assert "conv1/PrimaryCaps as written (conv1, ReLU and PrimaryCapsules.forward: nn.Conv2d " \
           "is faster above 64x64 inputs)" in checked.line()
    assert not wide.fast_kernels and not checked.warnings()  # a choice, not a difference
    narrow = CapsNet(**SMALL_SETTINGS, image_size=64)
    assert kernels.checked(narrow, {**SMALL_SETTINGS, "image_size": 64},
                           torch.device("cpu")).record()["conv1_primary"] == "fast"


class Follower(World):
    """A process other than rank 0, whose broadcast hands it rank 0's kernels."""

    def broadcast(self, value):
        assert value is None  # it checked nothing itself
        return kernels.Kernels((kernels.Verdict("conv1_primary", False, why="set aside"),
                                kernels.Verdict("routing", True)))


def test_under_torchrun_the_other_processes_take_rank_0s_decision():
    model = CapsNet(**SMALL_SETTINGS)
    kernels.checked(model, SMALL_SETTINGS, torch.device("cpu"), Follower(rank=1, size=2))
    assert not model.fast_kernels and model.digits.routing.fast_kernels


def first_line_and_config(quick_args, capsys, *flags):
    assert train.main(quick_args + ["--train-samples", "32", "--test-samples", "16", *flags]) == 0
    run = quick_args[quick_args.index("--run-dir") + 1]
    config = json.loads(open(f"{run}/config.json").read())
    return capsys.readouterr().out.splitlines()[0], config["kernels"]


def test_the_first_line_and_config_json_name_the_kernels_checked(quick_args, capsys):
    line, record = first_line_and_config(quick_args, capsys)
    assert ("kernels: spectral conv1/PrimaryCaps (CPU) and routing backward by hand, both "
            "checked equal to the code as written (") in line
    assert record == {"conv1_primary": "fast", "routing": "fast"}


def test_without_fast_kernels_the_first_line_says_every_layer_runs_as_written(
        quick_args, capsys):
    line, record = first_line_and_config(quick_args, capsys, "--no-fast-kernels",
                                         "--routing", "uniform")
    assert ("kernels: conv1/PrimaryCaps as written (conv1, ReLU and PrimaryCapsules.forward: "
            "--no-fast-kernels), routing as written (UniformRouting: no fast form)") in line
    assert record == {"conv1_primary": "as written", "routing": "as written"}


TIME_COLUMNS = ("seconds", "train_images_per_s")


def trained(args):
    assert train.main(args) == 0
    run = args[args.index("--run-dir") + 1]
    with open(f"{run}/metrics.csv") as f:
        rows = [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]
    return rows, torch.load(f"{run}/last.pt", weights_only=True)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_is_bit_for_bit_the_same_with_the_check_as_without_it(
        precision, quick_args, tmp_path, monkeypatch):
    args = quick_args + ["--epochs", "2", "--precision", precision, "--train-samples", "64",
                         "--test-samples", "32"]
    checked_rows, checked_last = trained(args)
    monkeypatch.setattr(kernels, "compare", lambda form, twin: (0.0, 0.0))  # no check
    monkeypatch.setattr(kernels, "twin_of", lambda model, args: None)
    args[args.index("--run-dir") + 1] = str(tmp_path / "unchecked")
    rows, last = trained(args)
    assert rows == checked_rows and len(rows) == 2
    for part in ("model", "optimizer", "scheduler", "torch_rng", "data_rng", "meters"):
        assert same(last[part], checked_last[part]), part


def test_the_memory_probe_takes_the_runs_kernels_without_checking_them(monkeypatch):
    from capsnet import spectral
    from capsnet.config import Config
    from capsnet.run import footprint, probe
    from capsnet.run.build import model_args
    from test_experiments import noise_digits

    def refused(*args):
        raise AssertionError("called")
    monkeypatch.setattr(kernels, "check", refused)
    monkeypatch.setattr(spectral, "conv1_primary", refused)
    cfg = Config(batch_size=2, **SMALL_SETTINGS)
    args = model_args(cfg, noise_digits(4))
    spec = footprint.spec_of(cfg, args, 1, torch.device("cpu"),
                             {"conv1_primary": "as written", "routing": "fast"})
    assert len(probe.probe(spec)) == 2  # a step at each of its two batches, as written


def test_the_check_runs_from_inside_inference_mode_too():
    model = CapsNet(**SMALL_SETTINGS)
    with torch.inference_mode():
        checked = kernels.checked(model, SMALL_SETTINGS, torch.device("cpu"))
    assert checked.record() == {"conv1_primary": "fast", "routing": "fast"}
