import json
import time

import pytest

from capsnet import bench


PAUSE = 0.05  # seconds added to every forward pass below


def test_bench_rates_count_the_time_of_every_step_and_the_epoch_follows_from_them(
        tmp_path, capsys, monkeypatch):
    """With each forward pass made PAUSE slower, no rate can exceed a batch per PAUSE, and the
    extrapolated epoch (60,000 + 10,000 images) takes at least that long: a clock that missed
    the steps, or an epoch made from the wrong rates, would fail this on any machine."""
    original = bench.forward_step

    def slowed(*args, **kwargs):
        step = original(*args, **kwargs)

        def slow(sample):
            time.sleep(PAUSE)
            return step(sample)
        return slow
    monkeypatch.setattr(bench, "forward_step", slowed)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--batch-size", "8", "--steps", "2", "--warmup", "1",
                       "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ceiling = 8 / PAUSE  # images/s
    assert result["train_images_per_s"] <= ceiling and result["eval_images_per_s"] <= ceiling
    assert result["epoch_seconds"] >= 70_000 / ceiling
    assert result["first_passes_seconds"] >= 2 * PAUSE  # a warm-up batch trained and tested
    assert (result["batch_size"], result["precision"], result["epoch_measured"]) == (8, "fp32", False)
    assert len(result["probe_lengths"]) == 8 and len(result["probe_lengths"][0]) == 10
    assert f"{result['train_images_per_s']:.1f}" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, least", [("--steps", "0", 1), ("--repeats", "0", 1),
                                                ("--batch-size", "x", 1), ("--warmup", "-1", 0)])
def test_bench_rejects_bad_counts_in_one_line(capsys, flag, value, least):
    with pytest.raises(SystemExit) as exit:
        bench.main(["--device", "cpu", flag, value])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: argument {flag}: '{value}' is not allowed: use an integer "
                          f">= {least}") and err.count("\n") == 1


def test_bench_takes_a_dataset_shape_and_a_preset_network(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                       "--repeats", "1", "--preset", "svhn", "--class-dim", "4",
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == "svhn"
    assert result["network"]["conv1_channels"] == 64 and result["network"]["class_dim"] == 4
    # conv1 3*64*81+64, primary 64*96*81+96, W (16*8*8 capsules)*10*4*6,
    # decoder 40*512+512, 512*1024+1024, 1024*3072+3072
    assert result["parameters"] == 15616 + 497760 + 245760 + 20992 + 525312 + 3148800
    assert "svhn-shaped" in capsys.readouterr().out
    assert bench.main(["--device", "cpu", "--dataset", "affnist"]) == 2
    assert "test set only" in capsys.readouterr().err


def test_bench_times_the_routing_it_is_given_and_refuses_an_option_of_another(tmp_path, capsys):
    out = tmp_path / "bench.json"
    small = ["--conv1-channels", "16", "--primary-types", "4", "--batch-size", "2", "--steps",
             "1", "--warmup", "0", "--repeats", "1"]
    assert bench.main(["--device", "cpu", *small, "--routing", "em", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["network"]["routing"] == "em"
    assert bench.main(["--device", "cpu", *small, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["parameters"] == result["parameters"] - 20  # the betas
    capsys.readouterr()
    assert bench.main(["--device", "cpu", "--routing", "em", "--leaky-routing"]) == 2
    assert "--leaky-routing does not apply to --routing em" in capsys.readouterr().err


def test_bench_compile_builds_graphs_of_the_one_batch_shape_train_py_gives(monkeypatch):
    """Every graph dynamo hands a backend has static shapes with the batch size: the probe of
    the capsule lengths takes a full batch, so nothing recompiles for a symbolic batch."""
    import torch
    shapes = []

    def backend(graph, example_inputs):
        shapes.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return graph.forward
    original = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: original(model, backend=backend))
    monkeypatch.setattr(bench, "PROBE", 4)  # fewer lengths kept than a batch holds
    torch._dynamo.reset()
    try:
        result = bench.run("cpu", 8, "fp32", True, steps=2, warmup=1, repeats=1,
                           network={"conv1_channels": 8, "primary_types": 2, "class_dim": 4})
    finally:
        torch._dynamo.reset()
    assert result["compile"] and shapes
    images = [s for graph in shapes for s in graph if s[1:] == (1, 28, 28)]  # the batches
    assert images and all(s[0] == 8 for s in images)
    assert len(result["probe_lengths"]) == 4
    assert all(isinstance(d, int) for graph in shapes for s in graph for d in s)
