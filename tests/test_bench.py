import json

import pytest

from capsnet import bench


def test_bench_measures_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--batch-size", "8", "--steps", "1", "--warmup", "1",
                       "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("train_images_per_s", "eval_images_per_s", "epoch_seconds", "peak_memory_mb"):
        assert result[key] > 0
    assert result["epoch_seconds"] == pytest.approx(
        60_000 / result["train_images_per_s"] + 10_000 / result["eval_images_per_s"])
    assert (result["batch_size"], result["precision"], result["epoch_measured"]) == (8, "fp32", False)
    assert result["first_passes_seconds"] > 0 and result["compile_seconds"] >= 0
    assert len(result["probe_lengths"]) == 8 and len(result["probe_lengths"][0]) == 10
    assert "train images/s" in capsys.readouterr().out


def test_bench_rejects_bad_counts(capsys):
    assert bench.main(["--device", "cpu", "--steps", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --steps, --repeats and --batch-size must be")


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
