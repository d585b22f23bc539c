"""The memory check before training: a step counted, or measured in a separate process; a batch
that does not fit is computed in micro-batches that do, and where not one image fits the run
stops with one line."""
import contextlib
import io
import re

import pytest
import torch

import train

from capsnet.run import footprint, probe
from capsnet.run.build import model_args
from capsnet.errors import UserError
from capsnet.run.footprint import Footprint
from capsnet.config import Config
from capsnet.networks import MODELS
from capsnet.run.recipe import configure_precision
from conftest import SMALL_SETTINGS, run_main
from test_experiments import noise_digits


def test_the_line_through_two_measured_steps():
    line = Footprint(fixed=100.0, per_example=10.0)
    assert line.of(8) == 180.0
    assert line.largest_batch(180.0) == 8 and line.largest_batch(189.9) == 8
    assert line.largest_batch(99.0) == 0
    assert Footprint(50.0, 0.0).largest_batch(60.0) > 10 ** 6


def step_of(cfg: Config, args: dict) -> footprint.Step:
    """The training step a run of `cfg` takes, as build_run makes it."""
    model = MODELS[cfg.model].build(args, cfg)
    return footprint.Step(model, MODELS[cfg.model].criterion(cfg, lambda: 0.0),
                          configure_precision(cfg.precision, torch.device("cpu")), 1)


def test_a_real_probe_measures_one_and_two_images_then_confirms_the_target():
    cfg = Config(batch_size=8)
    spec = footprint.spec_of(cfg, model_args(cfg, noise_digits(4)), 1, torch.device("cpu"), {})
    measured = footprint.measure(spec)  # no budget: the target, 8, confirmed
    assert measured.fixed > 100 * 2 ** 20 and measured.per_example >= 0  # PyTorch, activations


def test_the_probe_never_runs_a_size_before_estimating_that_it_fits(monkeypatch):
    """Peaks of 100 + 10 x images: the line through one and two images puts 5 within a budget
    of 155, which the probe then runs (with shrink), or nothing more (without)."""
    cfg = Config(batch_size=8, **SMALL_SETTINGS)
    spec = footprint.spec_of(cfg, model_args(cfg, noise_digits(4)), 1, torch.device("cpu"), {})
    sizes = []
    real = footprint.random_step
    monkeypatch.setattr(footprint, "random_step",
                        lambda batch, *args, **kwargs: sizes.append(batch) or real(batch, *args,
                                                                                  **kwargs))
    monkeypatch.setattr(probe, "peak_resident", lambda: 100.0 + 10 * sizes[-1])
    points = probe.probe({**spec, "target": 8, "budget": 155.0, "shrink": True})
    assert points == [[1, 110.0], [2, 120.0], [5, 150.0]]
    assert probe.probe({**spec, "target": 8, "budget": 155.0, "shrink": False}) == \
        [[1, 110.0], [2, 120.0]]  # 8 does not fit: it never runs
    assert probe.probe({**spec, "target": 8, "budget": None, "shrink": False})[-1] == [8, 180.0]


def test_a_batch_that_does_not_fit_is_computed_in_the_fewest_parts_that_do(monkeypatch):
    cfg = Config(batch_size=128, **SMALL_SETTINGS)
    args = model_args(cfg, noise_digits(4))
    step = step_of(cfg, args)
    spec = footprint.spec_of(cfg, args, 1, torch.device("cpu"), {})
    measured = Footprint(2 ** 30, 2 ** 28)  # 1 GiB and 0.25 GiB per image: 33 GiB for 128
    free = measured.of(20.5) / footprint.HEADROOM  # room for 20 images
    asked = []
    monkeypatch.setattr(footprint, "bound", lambda step, spec: Footprint(2 ** 40, 0.0))
    monkeypatch.setattr(footprint, "available", lambda device: free)
    monkeypatch.setattr(footprint, "measure", lambda spec: asked.append(spec) or measured)
    plan = footprint.check(step, spec, 128, 0, torch.device("cpu"))
    assert plan.micro_batch == 19  # 7 parts: 6 of 19 and one of 14
    assert plan.words == ("batch 128 in 7 micro-batches of at most 19: the whole batch needs "
                          "about 33.0 GiB, 6.8 GiB are free, 19 images 5.8 GiB (measured: an "
                          "eager step (the count of its allocations, 1024.0 GiB, is above the "
                          "6.8 GiB free))")
    assert asked[0]["target"] == 128 and asked[0]["shrink"]
    assert footprint.check(step, spec, 128, 16, torch.device("cpu")).micro_batch == 16  # fits
    with pytest.raises(UserError) as refused:
        footprint.check(step, spec, 128, 32, torch.device("cpu"))
    message = str(refused.value)
    assert "a micro-batch of 32 1x28x28 images needs about 9.0 GiB" in message
    assert "--micro-batch 20 or less fits" in message and "\n" not in message
    monkeypatch.setattr(footprint, "available", lambda device: measured.of(0.5))
    with pytest.raises(UserError) as refused:
        footprint.check(step, spec, 128, 0, torch.device("cpu"))
    assert "no batch fits, not even one image at a time" in str(refused.value)


def test_a_steps_allocations_grow_by_the_same_bytes_with_each_example():
    cfg = Config(**SMALL_SETTINGS)
    step = step_of(cfg, model_args(cfg, noise_digits(4)))
    footprint.allocated(step, (1, 28, 28), 10, 1)  # what a first step makes once (its DFTs)
    one, two, three = (footprint.allocated(step, (1, 28, 28), 10, batch) for batch in (1, 2, 3))
    assert two - one == pytest.approx(three - two, rel=0.02)  # an example's activations
    assert two - one > 100_000  # and their gradients


def first_line(quick_args: list[str]) -> str:
    """The first line of a short run with the memory check."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train.main(quick_args + ["--memory-check", "--train-samples", "32",
                                        "--test-samples", "16"]) == 0
    return out.getvalue().splitlines()[0]


def test_a_cpu_batch_far_below_the_free_memory_is_counted_not_measured(quick_args, monkeypatch):
    def measure(spec):
        raise AssertionError("a step was measured")
    monkeypatch.setattr(footprint, "measure", measure)
    first = first_line(quick_args)
    assert re.search(r"a training step needs at most [0-9.]+ GiB \(every allocation of a step "
                     r"counted, below the [0-9.]+ GiB free: no step measured\)", first), first


def test_a_cpu_batch_whose_count_comes_near_the_free_memory_is_measured(quick_args, monkeypatch):
    counted = footprint.Footprint(2 * 2 ** 30, 0.0, "counted", measured=False)
    monkeypatch.setattr(footprint, "bound", lambda step, spec: counted)
    monkeypatch.setattr(footprint, "available", lambda device: 2.1 * 2 ** 30)  # 2 GiB: near
    monkeypatch.setattr(footprint, "measure", lambda spec: footprint.Footprint(2 ** 29, 0.0))
    first = first_line(quick_args)
    assert ("a training step needs about 0.50 GiB (measured: an eager step (the count of its "
            "allocations, 2.0 GiB, comes near the 2.1 GiB free))") in first


def test_a_run_whose_batch_does_not_fit_trains_in_micro_batches_and_says_so(quick_args,
                                                                           monkeypatch):
    per_image = footprint.Footprint(2 ** 28, 2 ** 26, "counted", measured=False)
    monkeypatch.setattr(footprint, "bound", lambda step, spec: per_image)
    monkeypatch.setattr(footprint, "available", lambda device: per_image.of(10.5) / 0.9)
    monkeypatch.setattr(footprint, "measure", lambda spec: footprint.Footprint(2 ** 28, 2 ** 26))
    first = first_line(quick_args)  # a batch of 32 where 10 fit: 4 parts of 8
    assert "batch 32 in 4 micro-batches of at most 8: the whole batch needs about 2.2 GiB" in first


def test_train_py_stops_before_training_when_the_batch_does_not_fit(quick_args, monkeypatch,
                                                                   capsys, tmp_path):
    monkeypatch.setattr(footprint, "available", lambda device: 2.0 ** 20)  # 1 MiB free
    code, err = run_main(quick_args + ["--memory-check", "--train-samples", "32",
                                       "--test-samples", "16"], capsys)
    progress, refusal = err.splitlines()  # the measurement's progress line, the refusal
    assert progress.startswith("memory check: measuring training steps in a separate process")
    assert code == 2 and "needs about" in refusal and "no batch fits" in refusal
    assert not (tmp_path / "run" / "last.pt").exists()
    monkeypatch.setattr(footprint, "available", lambda device: 2.0 ** 40)
    code, err = run_main(quick_args + ["--memory-check", "--train-samples", "32",
                                       "--test-samples", "16"], capsys)
    assert code == 0, err


def test_a_test_set_the_gpu_has_no_room_for_is_refused_in_one_line(monkeypatch):
    """320,000 affNIST images are 0.5 GB of uint8: with 0.3 GB free the run stops before moving
    them, naming the flag that takes fewer."""
    from capsnet.data.records import Split
    images = torch.zeros(320_000, 1, 40, 40, dtype=torch.uint8)
    test = Split(images, torch.zeros(320_000, dtype=torch.int64), tuple("0123456789"))
    cuda = torch.device("cuda")
    monkeypatch.setattr(footprint, "available", lambda device: 0.3 * 2 ** 30)
    with pytest.raises(UserError) as refused:
        footprint.check_data({"train": None, "test": test}, cuda)
    message = str(refused.value)
    assert "320,000 test images" in message and "0.48 GiB" in message
    assert "--test-samples N" in message and "--train-samples" not in message
    monkeypatch.setattr(footprint, "available", lambda device: 2.0 * 2 ** 30)
    footprint.check_data({"train": None, "test": test}, cuda)  # room enough: no complaint
    footprint.check_data({"train": None, "test": test}, torch.device("cpu"))  # already in memory


def test_with_cuda_graph_modes_the_probe_measures_the_compiled_step(monkeypatch):
    """reduce-overhead and max-autotune keep CUDA graphs' memory pools: on CUDA the probe
    compiles the step in that mode and runs it until a graph replays; otherwise an eager step."""
    from capsnet.run import recipe
    cfg = Config(batch_size=8, compile=True, compile_mode="reduce-overhead", conv1_channels=8,
                 primary_types=2)
    args = model_args(cfg, noise_digits(4))
    assert footprint.spec_of(cfg, args, 1, torch.device("cuda"), {})["compile_mode"] == \
        "reduce-overhead"
    assert footprint.spec_of(cfg, args, 1, torch.device("cpu"), {})["compile_mode"] == ""
    for mode, graphs in (("default", ""), ("max-autotune-no-cudagraphs", ""),
                         ("max-autotune", "max-autotune")):
        other = Config(compile=True, compile_mode=mode)
        assert footprint.spec_of(other, args, 1, torch.device("cuda"), {})["compile_mode"] == graphs
    spec = {**footprint.spec_of(cfg, args, 1, torch.device("cpu"), {}), "compile_mode": "max-autotune"}
    compiled, calls = [], []

    def compile_model(model, enabled, mode="default"):
        compiled.append((enabled, mode))
        return lambda *inputs: calls.append(len(inputs[0])) or model(*inputs)
    monkeypatch.setattr(recipe, "compile_model", compile_model)
    assert len(probe.probe({**spec, "target": 8})) == 3
    assert compiled == [(True, "max-autotune")] * 3  # afresh for each batch size
    assert calls == [1] * probe.GRAPH_STEPS + [2] * probe.GRAPH_STEPS + [8] * probe.GRAPH_STEPS
    monkeypatch.setattr(footprint.subprocess, "run", lambda *a, **k: type(
        "Done", (), {"returncode": 0, "stdout": "[[1, 90.0], [2, 100.0], [8, 220.0]]\n",
                     "stderr": ""})())
    measured = footprint.measure(spec)
    assert (measured.fixed, measured.per_example) == (60.0, 20.0)  # through the two largest
    assert measured.how == "a step compiled in max-autotune mode with its CUDA graphs' memory pools"
