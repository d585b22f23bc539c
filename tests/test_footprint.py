"""The memory check before training: a step measured in a separate process, and one line with a
batch size that fits when the run's does not."""
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


def test_a_real_probe_grows_with_the_batch_and_names_a_batch_that_fits(monkeypatch):
    cfg = Config(batch_size=8)
    args = model_args(cfg, noise_digits(4))
    step = step_of(cfg, args)
    spec = footprint.spec_of(cfg, args, 1, torch.device("cpu"), {})
    assert spec["batches"] == [4, 8]
    measured = footprint.measure(spec)
    assert measured.fixed > 100 * 2 ** 20 and measured.per_example > 0  # PyTorch, then activations
    free = measured.of(6.5) / footprint.HEADROOM  # room for a batch of 6, not of 7 or 8
    monkeypatch.setattr(footprint, "available", lambda device: free)
    monkeypatch.setattr(footprint, "measure", lambda spec: measured)  # the same probe again
    with pytest.raises(UserError) as error:
        footprint.check(step, spec, 8, torch.device("cpu"))
    message = str(error.value)
    assert "batch 8 on 1x28x28" in message and "\n" not in message
    assert "--batch-size 6 or less fits" in message


def test_a_steps_allocations_grow_by_the_same_bytes_with_each_example():
    cfg = Config(**SMALL_SETTINGS)
    step = step_of(cfg, model_args(cfg, noise_digits(4)))
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


def test_train_py_stops_before_training_when_the_batch_does_not_fit(quick_args, monkeypatch,
                                                                   capsys, tmp_path):
    monkeypatch.setattr(footprint, "available", lambda device: 2.0 ** 20)  # 1 MiB free
    code, err = run_main(quick_args + ["--memory-check", "--train-samples", "32",
                                       "--test-samples", "16"], capsys)
    assert code == 2 and "needs about" in err and "no batch fits" in err and "\n" not in err
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
    assert len(probe.probe(spec)) == 2
    assert compiled == [(True, "max-autotune")] * 2  # afresh for each batch size
    assert calls == [4] * probe.GRAPH_STEPS + [8] * probe.GRAPH_STEPS
    monkeypatch.setattr(footprint.subprocess, "run", lambda *a, **k: type(
        "Done", (), {"returncode": 0, "stdout": "[100.0, 180.0]\n", "stderr": ""})())
    measured = footprint.measure(spec)
    assert (measured.fixed, measured.per_example) == (20.0, 20.0)
    assert measured.how == "a step compiled in max-autotune mode with its CUDA graphs' memory pools"
