"""The memory check before training: a step measured in a separate process, and one line with a
batch size that fits when the run's does not."""
import pytest
import torch

from capsnet.run import footprint, probe
from capsnet.run.build import model_args
from capsnet.errors import UserError
from capsnet.run.footprint import Footprint
from capsnet.config import Config
from conftest import run_main
from test_experiments import noise_digits


def test_the_line_through_two_measured_steps():
    line = Footprint(fixed=100.0, per_example=10.0)
    assert line.of(8) == 180.0
    assert line.largest_batch(180.0) == 8 and line.largest_batch(189.9) == 8
    assert line.largest_batch(99.0) == 0
    assert Footprint(50.0, 0.0).largest_batch(60.0) > 10 ** 6


def test_a_real_probe_grows_with_the_batch_and_names_a_batch_that_fits(monkeypatch):
    cfg = Config(batch_size=8)
    args = model_args(cfg, noise_digits(4))
    spec = footprint.spec_of(cfg, args, 1, torch.device("cpu"), {})
    assert spec["batches"] == [4, 8]
    measured = footprint.measure(spec)
    assert measured.fixed > 100 * 2 ** 20 and measured.per_example > 0  # PyTorch, then activations
    free = measured.of(6.5) / footprint.HEADROOM  # room for a batch of 6, not of 7 or 8
    monkeypatch.setattr(footprint, "available", lambda device: free)
    monkeypatch.setattr(footprint, "measure", lambda spec: measured)  # the same probe again
    with pytest.raises(UserError) as error:
        footprint.check(spec, 8, torch.device("cpu"))
    message = str(error.value)
    assert "batch 8 on 1x28x28" in message and "\n" not in message
    assert "--batch-size 6 or less fits" in message


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
    from capsnet.data.datasets import Split
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
