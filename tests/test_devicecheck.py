"""`make device-check`'s command, dry-run on the CPU: every part, its budget, its files and rows."""
import json
import tarfile

from capsnet import devicecheck

LABELS = ["fp32", "tf32", "bf16", "bf16 + compile", "bf16 + compile + CUDA graphs"]


def test_a_dry_run_writes_every_part_into_eight_files(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("CAPSNET_DATA_DIR", str(data_root))
    out = tmp_path / "out"
    # a budget no busy machine runs out of: stopping at a share is the next test's
    assert devicecheck.main(["--out", str(out), "--budget", "3600", "--dry-run"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "curve.png", "device-check.json", "device-check.log", "paper-metrics.csv", "paper.json",
        "paper.pt", "rows.md", "runs.tar.gz"]
    assert (out / "paper.pt").stat().st_size < 16 * 2 ** 20  # what the device tool brings back
    results = json.loads((out / "device-check.json").read_text())
    assert results["dry_run"] and results["tests"]["exit"] == 0
    assert "skipped" in results["tests"]["summary"]  # no GPU here: test_cuda.py skips
    bench = results["bench"]
    assert [row["label"] for row in bench] == LABELS + [results["setting"]["label"]]
    rows = (out / "rows.md").read_text()
    for row in bench[:3] + bench[-1:]:  # each measured row, as the bench wrote it, in rows.md
        assert row["exit"] == 0 and "--json" not in row["command"]
        assert (f"| {row['label']} | {row['batch_size']} | {row['train_images_per_s']:.0f} | "
                f"{row['eval_images_per_s']:.0f} | {row['epoch_seconds']:.1f} | "
                f"{row['compile_seconds']:.1f} | {row['peak_memory_mb']:.0f} |") in rows
    assert all(row["agrees_with_fp32"] for row in bench[:3])
    assert all("skipped" in row for row in bench[3:5])  # no inductor on the CPU
    fastest = max(bench[:3], key=lambda row: row["train_images_per_s"])
    assert results["setting"]["label"] == fastest["label"]  # fastest of those that agree
    assert bench[-1]["batch_size"] == 16  # the large batch, at that setting
    assert results["epoch"]["with_compile_seconds"] > 0
    assert results["epoch"]["without_compile_seconds"] > 0
    for name in ("epoch", "paper", "official"):
        run = results["runs"][name]
        assert run["exit"] == 0 and [r["epoch"] for r in run["epochs"]] == [1.0, 2.0], name
    with tarfile.open(out / "runs.tar.gz") as tar:
        assert {"paper/metrics.csv", "official/config.json", "epoch/metrics.csv"} <= set(
            tar.getnames())
    assert "DRY RUN on the CPU" in rows and "| fp32 | 8 |" in rows and "| tf32 | 8 |" in rows
    assert "| bf16 + compile |  | no compile in a dry run" in rows
    assert "| MNIST, paper | 2 |" in rows and "| MNIST, official | 2 |" in rows
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    # the weights it brings back ship as a model of this package, scoring what they say
    shipped = results["weights"]
    assert shipped["file"] == "paper.pt" and shipped["epoch"] == 2
    assert shipped["tested"] == "48 images"  # the whole test set, not the run's 32
    assert f"{shipped['test_accuracy']:.2f}% on 48 images" in rows
    from capsnet import weights
    from capsnet.weights.__main__ import main as ship
    assert ship([str(out / "paper.pt"), "mnist", "--out", str(tmp_path / "weights")]) == 0
    assert weights.record_of("mnist", tmp_path / "weights")["test_accuracy"] == \
        shipped["test_accuracy"]
    # the rows again from the results alone (as after a rerun of one part)
    again = tmp_path / "again"
    assert devicecheck.main(["--out", str(again), "--only", "rows", "--results",
                             str(out / "device-check.json")]) == 0
    assert (again / "rows.md").read_text() == rows


HANG = """import sys, time
if "capsnet.bench" in " ".join(sys.argv) or sys.argv[:1] == ["-m"]:
    time.sleep(3600)
"""


def test_a_part_stops_at_its_share_and_the_others_are_recorded_as_not_run(tmp_path, capsys,
                                                                          monkeypatch):
    """Every bench command here never ends by itself (a sitecustomize that sleeps in each
    Python process the check starts), so the budget is what stops it."""
    (tmp_path / "hang").mkdir()
    (tmp_path / "hang" / "sitecustomize.py").write_text(HANG)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "hang"))
    monkeypatch.setattr(devicecheck, "STOP_GRACE", 1.0)
    out = tmp_path / "out"
    assert devicecheck.main(["--out", str(out), "--budget", "2", "--only", "bench",
                             "--dry-run"]) == 0
    bench = json.loads((out / "device-check.json").read_text())["bench"]
    assert bench[0]["exit"] is None  # stopped
    assert all("train_images_per_s" not in row for row in bench)
    rows = (out / "rows.md").read_text()
    assert "| fp32 | 8 | not measured (exit None) |" in rows
    assert devicecheck.main(["--out", str(out), "--budget", "0"]) == 2
    assert "--budget 0.0 is not allowed" in capsys.readouterr().err
