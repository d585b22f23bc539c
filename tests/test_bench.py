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
    assert "train images/s" in capsys.readouterr().out


def test_bench_rejects_bad_counts(capsys):
    assert bench.main(["--device", "cpu", "--steps", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --steps, --repeats and --batch-size must be")
