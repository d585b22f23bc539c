"""python -m capsnet.experiments: the paper's comparisons end to end, on tiny runs."""
import signal

import pytest

from capsnet import experiments

TINY = ["--no-download", "--no-visdom", "--batch-size", "32", "--train-samples", "64",
        "--test-samples", "32", "--conv1-channels", "16", "--primary-types", "4",
        "--class-dim", "8", "--baseline-channels", "8,8,4", "--baseline-hidden", "16,8"]


def run(name: str, out, data, *extra: str) -> int:
    tiny = TINY if name != "affnist" else TINY[:-2]  # its baseline's hidden widths are its own
    return experiments.main([name, "--epochs", "2", "--out", str(out), "--data-dir", str(data),
                             *tiny, *extra])


def table(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_table1_runs_resumes_after_an_interrupt_and_writes_the_same_results(
        data_root, tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight"
    assert run("table1", straight, data_root) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("[") and "epochs in" in line for line in out.splitlines()) == 5
    results = (straight / "results.md").read_text()
    rows = table(results)
    assert [r[0] for r in rows] == [r.label for r in experiments.EXPERIMENTS["table1"].rows]
    assert [r[3] for r in rows] == ["0.39", "0.34", "0.29", "0.35", "0.25"]  # the paper's
    assert all(0 <= float(r[1]) <= 100 and r[2] == "1" for r in rows)
    assert all(float(r[4].split(" (epoch ")[0]) <= float(r[1]) for r in rows)  # best test epoch
    assert "Selection: none: the last epoch" in results and "Epochs: 2" in results
    assert (straight / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # kept without its checkpoints (config.json, metrics.csv, result.json): complete, the same
    import shutil
    kept = tmp_path / "kept"
    shutil.copytree(straight, kept, ignore=shutil.ignore_patterns("*.pt", "*.log"))
    capsys.readouterr()
    assert run("table1", kept, data_root) == 0
    assert capsys.readouterr().out.count("complete, skipped") == 5
    assert (kept / "results.md").read_text() == results
    # asked for more epochs than a kept run has, with nothing to continue from: refused, kept
    assert experiments.main(["table1", "--epochs", "3", "--out", str(kept),
                             "--data-dir", str(data_root), *TINY]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("has 2 epochs, fewer than --epochs 3") == 5
    assert (kept / "baseline-cnn-seed0" / "result.json").exists()
    # other settings than the kept runs': refused before any run, the folder as it was
    before = {p: p.read_bytes() for p in sorted(kept.rglob("*")) if p.is_file()}
    assert run("table1", kept, data_root, "--train-samples", "96") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {kept / 'baseline-cnn-seed0'} was trained with other settings "
                   "(--train-samples 64 there, 96 now): give these settings another --out, or "
                   f"remove {kept} to train them there")
    assert {p: p.read_bytes() for p in sorted(kept.rglob("*")) if p.is_file()} == before
    # interrupted in the third run's second epoch, then started again
    interrupted = tmp_path / "interrupted"
    import capsnet.run.runner as runner
    import capsnet.training as training
    original_train, original_add = runner.train_run, training.add_to_meters
    starts, fired = [], []

    def counting(*args, **kwargs):
        starts.append(1)
        return original_train(*args, **kwargs)

    def add_and_maybe_interrupt(meters, state):
        original_add(meters, state)
        if len(starts) == 3 and state["train"] and state["t"] == 2 and not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(runner, "train_run", counting)
    monkeypatch.setattr(training, "add_to_meters", add_and_maybe_interrupt)
    with pytest.raises(SystemExit) as stopped:
        run("table1", interrupted, data_root)
    assert stopped.value.code == 130 and fired
    monkeypatch.setattr(training, "add_to_meters", original_add)
    assert not (interrupted / "results.md").exists()
    assert run("table1", interrupted, data_root) == 0
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 2 and out.count("resuming in") == 1
    assert (interrupted / "results.md").read_text() == results


def test_routing_and_the_affnist_protocol_on_the_stand_in(data_root, tmp_path, capsys,
                                                          monkeypatch):
    from capsnet.data import splits
    reads = []
    original = splits.read_split
    monkeypatch.setattr(splits, "read_split", lambda *args: reads.append(args) or original(*args))
    assert run("routing", tmp_path / "routing", data_root) == 0
    assert [args[2] for args in reads] == [True, False]  # 5 runs, MNIST read once
    rows = table((tmp_path / "routing" / "results.md").read_text())
    assert [r[0] for r in rows] == [f"routing {k}" for k in range(1, 6)]
    assert all(r[3] == "-" for r in rows)  # no paper numbers for this table
    capsys.readouterr()
    out = tmp_path / "affnist"
    assert run("affnist", out, data_root, "--validation-samples", "16") == 0
    printed = capsys.readouterr().out
    assert "tested on mnist-affine-standin" in printed
    text = (out / "results.md").read_text()
    assert "offline stand-in, not affNIST" in text
    rows = table(text)
    assert [r[3] for r in rows] == ["79.0", "66.0"]
    assert all(0 <= float(r[1]) <= 100 for r in rows)
    assert "Selection: the best validation epoch" in text
    # a run directory holds an ordinary run: mnist40, a validation split, the stand-in's result
    from capsnet.run.storage import load_checkpoint
    config = load_checkpoint(out / "capsnet-seed0" / "last.pt")["config"]
    assert config["dataset"] == "mnist40" and config["validation_samples"] == 16
    assert config["stop_at_accuracy"] == 99.23
    assert float((out / "capsnet-seed0" / "affnist.txt").read_text().split()[0]) == \
        pytest.approx(float(rows[0][1]), abs=0.01)


def test_routing_algorithms_compares_every_routing_with_its_size_and_speed(data_root, tmp_path,
                                                                          capsys):
    from capsnet.routing import ROUTINGS
    out = tmp_path / "algorithms"
    assert run("routing-algorithms", out, data_root) == 0
    text = (out / "results.md").read_text()
    assert "| run | ours | seeds | the paper | parameters | train images/s | s per epoch | " \
        "best test epoch |" in text
    rows = {r[0]: r for r in table(text)}
    authors = "attention, its authors' form"
    assert list(ROUTINGS) == ["dynamic", "self-attention", "uniform", "em", "attention"]
    assert list(rows) == [*ROUTINGS, authors]
    assert [rows[name][3] for name in rows] == ["0.25", "-", "-", "-", "-", "-"]
    params = {name: int(r[4].replace(",", "")) for name, r in rows.items()}
    assert params["self-attention"] == params["dynamic"] + 10 * 4 * 6 * 6  # its prior b_ij
    assert params["uniform"] == params["dynamic"]
    assert params["attention"] == params["dynamic"] + 2 * 8 + 8 + 1  # LayerNorm, score layer
    assert params["em"] == params["dynamic"] + 2 * 10  # beta_u and beta_a of each class
    assert params[authors] == params["attention"] + 2 * 8  # the primary capsules' LayerNorm
    assert all(0 <= float(r[1]) <= 100 and float(r[5]) > 0 and float(r[6]) > 0
               for r in rows.values())
    for r in rows.values():  # the lowest point of a 2-epoch curve ending at the last epoch's
        lowest, epoch = r[7].split(" (epoch ")
        assert float(lowest) <= float(r[1]) and epoch in ("1)", "2)")
    from capsnet.run.storage import load_checkpoint
    for name in ROUTINGS:  # each an ordinary run of its routing
        run_dir = out / f"{experiments.slug(name)}-seed0"
        assert load_checkpoint(run_dir / "last.pt")["config"]["routing"] == name
    config = load_checkpoint(out / f"{experiments.slug(authors)}-seed0" / "last.pt")["config"]
    assert (config["routing"], config["primary_norm"], config["score_loss"],
            config["reconstruction_weight"], config["routing_iterations"]) == \
        ("attention", "layer-norm", "cross-entropy", 0.0, 2)
    capsys.readouterr()
    assert run("routing-algorithms", tmp_path / "again", data_root, "--routing", "uniform") == 2
    err = capsys.readouterr().err
    assert "--routing is set by the routing-algorithms experiment's runs" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "again").exists()


def test_bad_experiment_flags_are_one_line(data_root, tmp_path, capsys):
    assert experiments.main(["table1", "--out", str(tmp_path), "--seed", "3"]) == 2
    assert "--seed is set by the experiment" in capsys.readouterr().err
    assert experiments.main(["table1", "--out", str(tmp_path), "--batch-size", "0"]) == 2
    assert "--batch-size 0 is not allowed" in capsys.readouterr().err


@pytest.mark.parametrize("given, expected", [
    (["--seed=7"], "--seed is set by the experiment for each run; pass --epochs and --seeds"),
    (["--epoch", "1"], "unrecognized arguments: --epoch 1"),
    (["--routing-iterations", "2"], "--routing-iterations is set by the routing experiment's runs"),
    (["--run-dir=elsewhere"], "--run-dir is set by the experiment for each run"),
    (["--routing", "uniform"], "--routing-iterations does not apply to --routing uniform"),
    (["--resume", "x/last.pt"], "--resume is not allowed: the experiment resumes"),
])
def test_a_setting_the_experiment_owns_is_refused_in_any_form(given, expected, data_root,
                                                              tmp_path, capsys):
    try:
        code = run("routing", tmp_path / "out", data_root, *given)
    except SystemExit as exit:  # the train.py parser's own refusal
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing was trained


def test_a_failed_run_quotes_its_reason_and_its_log_keeps_both_streams(tmp_path, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = tmp_path / "out"
    assert run("routing", out, empty) == 2
    printed = capsys.readouterr().out
    failed = [line for line in printed.splitlines() if "FAILED" in line]
    assert len(failed) == 5
    assert "FAILED (mnist files are missing (expected train-images-idx3-ubyte" in failed[0]
    assert f"see {out / 'routing-1-seed0.log'}" in failed[0]
    assert "error: mnist files are missing" in (out / "routing-1-seed0.log").read_text()


def test_help_says_what_each_experiment_trains_and_that_train_flags_pass_through(capsys):
    with pytest.raises(SystemExit) as done:
        experiments.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "table1   the baseline; CapsNet with 1 routing iteration" in out
    assert "routing  test error against routing iterations 1 to 5" in out
    assert "routing-algorithms" in out and "{affnist,routing,routing-algorithms,table1}" in out
    assert "Any other flag goes to every run, as train.py takes it, except" in out
