"""End-to-end runs of train.py through torchnet's Engine on the made IDX data."""
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

import train
from capsnet.run.storage import load_checkpoint
from capsnet.run.rundir import COLUMNS, RunDir
from capsnet.training import Trainer, subscribe
from capsnet.config import Config
from conftest import SMALL_SETTINGS, fast_network

ROOT = Path(__file__).resolve().parents[1]


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_timing(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "train_images_per_s")}
            for row in table]


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def test_training_writes_metrics_checkpoints_and_config(quick_args, tmp_path, capsys):
    assert train.main(replace_flag(quick_args, "--epochs", "2")) == 0
    run = tmp_path / "run"
    table = rows(run)
    assert [row["epoch"] for row in table] == ["1", "2"]
    assert tuple(table[0]) == COLUMNS
    for row in table:
        assert float(row["train_loss"]) == pytest.approx(
            float(row["train_score_loss"]) + float(row["train_reconstruction"]), rel=1e-4)
    assert float(table[1]["lr"]) < float(table[0]["lr"]) < 1e-3  # decays every step
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["epoch"] == 2 and last["step"] == 6  # 96 images in batches of 32
    assert best["epoch"] in (1, 2)
    assert best["best_accuracy"] == pytest.approx(max(float(r["test_accuracy"]) for r in table), abs=1e-3)
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    out = capsys.readouterr().out
    assert "epoch 2/2  train loss" in out and "done: best test accuracy" in out


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """More of the made digits: enough steps for a tiny CapsNet to learn them."""
    from conftest import write_dataset
    return write_dataset(tmp_path_factory.mktemp("learnable"), train=480, test=100)


@pytest.mark.parametrize("extra", [[], ["--no-fast-kernels"], ["--precision", "bf16"]])
def test_the_made_digits_are_learned_far_above_chance(extra, learnable, tmp_path):
    """Chance is 10%: a broken gradient anywhere (a kernel's backward, the loss, the update)
    leaves the test accuracy near it."""
    from conftest import SMALL
    run = tmp_path / "run"
    assert train.main(["--data-dir", str(learnable), "--no-download", "--epochs", "3",
                       "--batch-size", "32", "--no-visdom", "--run-dir",
                       str(run), *SMALL, *extra]) == 0
    assert float(rows(run)[-1]["test_accuracy"]) >= 80


def test_same_seed_gives_the_same_run(quick_args, tmp_path):
    second = tmp_path / "again"
    assert train.main(quick_args) == 0
    assert train.main(replace_flag(quick_args, "--run-dir", str(second))) == 0
    assert without_timing(rows(tmp_path / "run")) == without_timing(rows(second))


def test_resume_continues_exactly_where_the_run_stopped(quick_args, tmp_path, capsys):
    straight = tmp_path / "straight"
    assert train.main(replace_flag(replace_flag(quick_args, "--epochs", "2"),
                                   "--run-dir", str(straight))) == 0
    assert train.main(quick_args) == 0  # one epoch
    run = tmp_path / "run"
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "2"]) == 0
    assert "epochs 2-2" in capsys.readouterr().out
    assert without_timing(rows(run)) == without_timing(rows(straight))
    assert load_checkpoint(run / "last.pt")["step"] == 6


def test_resume_of_a_finished_run_asks_for_more_epochs(quick_args, tmp_path, capsys):
    assert train.main(quick_args) == 0
    code = train.main(["--resume", str(tmp_path / "run" / "last.pt")])
    assert code == 2
    assert "finished 1 of --epochs 1; pass a larger --epochs" in capsys.readouterr().err


def test_eval_prints_loss_accuracy_and_the_confusion_matrix(quick_args, tmp_path, capsys):
    assert train.main(quick_args) == 0
    capsys.readouterr()
    assert train.main(["--eval", str(tmp_path / "run" / "best.pt")]) == 0
    out = capsys.readouterr().out.splitlines()
    accuracy = float(rows(tmp_path / "run")[0]["test_accuracy"])
    assert f"accuracy {accuracy:.2f}%" in out[0]
    assert out[1].startswith("confusion matrix")
    matrix = [[int(n) for n in line.split()[1:11]] for line in out[3:13]]
    assert len(matrix) == 10 and sum(map(sum, matrix)) == 48
    assert sum(matrix[k][k] for k in range(10)) == round(accuracy * 48 / 100)
    for k, line in enumerate(out[3:13]):  # each class's accuracy, from its row
        assert line.split()[-1] == f"{100 * matrix[k][k] / sum(matrix[k]):.2f}%"


def test_eval_tests_the_whole_test_set_unless_told_and_says_how_many(quick_args, tmp_path,
                                                                     capsys):
    """A run trained with --test-samples 16 is evaluated on all 48 test images; --test-samples
    given to --eval itself applies."""
    assert train.main(quick_args + ["--test-samples", "16"]) == 0
    capsys.readouterr()
    best = str(tmp_path / "run" / "best.pt")
    for extra, count in (([], 48), (["--test-samples", "20"], 20)):
        assert train.main(["--eval", best, *extra]) == 0
        out = capsys.readouterr().out.splitlines()
        assert f"on mnist ({count} images)" in out[0]
        matrix = [[int(n) for n in line.split()[1:11]] for line in out[3:13]]
        assert sum(map(sum, matrix)) == count


def test_hooks_subscribe_to_the_engine_and_bars_never_nest(data_root, tmp_path):
    cfg = Config(data_dir=str(data_root), download=False, epochs=3, batch_size=48,
                 visdom=False, **SMALL_SETTINGS)
    trainer = Trainer(cfg, RunDir.create(str(tmp_path / "run")))
    events: list = []
    subscribe(trainer.engine, "on_forward", lambda state: events.append("forward"))
    subscribe(trainer.engine, "on_start_epoch",
              lambda state: events.append(not isinstance(state["iterator"].iterable, tqdm)))
    subscribe(trainer.engine, "on_end_epoch", lambda state: events.append(state["metrics"]["epoch"]))
    trainer.fit()
    assert events == [True, "forward", "forward", 1] * 1 + [True, "forward", "forward", 2] \
        + [True, "forward", "forward", 3]


def test_interrupt_saves_last_checkpoint_and_exits_cleanly(quick_args, tmp_path):
    args = replace_flag(quick_args, "--epochs", "1000")
    process = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.csv"
    deadline = time.time() + 240
    while not metrics.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert metrics.exists(), process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in err
    assert f"interrupted: saved {tmp_path / 'run' / 'last.pt'}" in err
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["epoch"] >= 1 and checkpoint["step"] >= 3
    assert not (tmp_path / "run" / "last.pt.tmp").exists()


def final_weights(run: Path) -> dict:
    return load_checkpoint(run / "last.pt")["model"]


def interrupted_then_resumed(quick_args: list[str], run: Path, monkeypatch, when,
                             again: tuple[str, ...] = ()) -> None:
    """Train 2 epochs into `run`, sending SIGINT at the forward pass where `when(state)` says,
    then resume to the end (with the flags `again`)."""
    import capsnet.training as training
    original = training.add_to_meters
    fired: list = []

    def add_and_maybe_interrupt(meters, state):
        original(meters, state)
        if not fired and when(state):
            fired.append(True)
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(training, "add_to_meters", add_and_maybe_interrupt)
    args = replace_flag(replace_flag(quick_args, "--epochs", "2"), "--run-dir", str(run))
    with pytest.raises(SystemExit) as stopped:
        train.main(args)
    assert stopped.value.code == 130 and fired
    monkeypatch.setattr(training, "add_to_meters", original)
    data = quick_args[quick_args.index("--data-dir") + 1]
    assert train.main(["--resume", str(run / "last.pt"), "--data-dir", data, *again]) == 0


@pytest.mark.parametrize("where, when, flags", [
    ("mid-epoch", lambda state: state["train"] and state["t"] == 4, ()),  # epoch 2, batch 2
    ("test pass", lambda state: not state["train"], ()),  # epoch 1's
    ("mid-epoch", lambda state: state["train"] and state["t"] == 4, ("--dataset", "multimnist")),
    ("mid-epoch", lambda state: state["train"] and state["t"] == 4, ("--micro-batch", "12")),
])
def test_interrupt_and_resume_give_the_uninterrupted_run(where, when, flags, quick_args,
                                                        tmp_path, monkeypatch, capsys):
    quick_args = quick_args + list(flags)
    straight = tmp_path / "straight"
    assert train.main(replace_flag(replace_flag(quick_args, "--epochs", "2"),
                                   "--run-dir", str(straight))) == 0
    run = tmp_path / "interrupted"
    machine = flags if flags[:1] == ("--micro-batch",) else ()  # the machine's: given again
    interrupted_then_resumed(quick_args, run, monkeypatch, when, machine)
    err = capsys.readouterr()
    assert without_timing(rows(run)) == without_timing(rows(straight))
    straight_weights, weights = final_weights(straight), final_weights(run)
    assert all(torch.equal(straight_weights[k], weights[k]) for k in straight_weights)
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and last["batch"] == 0 and last["step"] == 6
    assert load_checkpoint(run / "best.pt")["best_accuracy"] == \
        load_checkpoint(straight / "best.pt")["best_accuracy"]
    if where == "test pass":
        assert "interrupted: saved" in err.err and "(epoch 1 before its test pass)" in err.err
        assert "(epoch 1 before its test pass)" in err.out  # the resumed run's first line
    else:
        assert "(epoch 2 after batch 2 of 3)" in err.err


def test_a_run_interrupted_in_its_test_pass_resumes_in_a_fresh_process(quick_args, tmp_path):
    """The resumed process starts with the test pass (under inference mode), then trains: what
    that pass caches must serve training too."""
    args = replace_flag(quick_args, "--epochs", "2")
    stopped = subprocess.run([sys.executable, "tests/interrupted_in_test_pass.py", *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 130, stopped.stderr
    assert "(epoch 1 before its test pass)" in stopped.stderr
    data = quick_args[quick_args.index("--data-dir") + 1]
    resumed = subprocess.run([sys.executable, "train.py", "--resume",
                              str(tmp_path / "run" / "last.pt"), "--data-dir", data],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2
    assert [row["epoch"] for row in rows(tmp_path / "run")] == ["1", "2"]


def test_last_checkpoint_holds_the_updated_best_accuracy(quick_args, tmp_path):
    assert train.main(replace_flag(quick_args, "--epochs", "2")) == 0
    best = max(float(r["test_accuracy"]) for r in rows(tmp_path / "run"))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["best_accuracy"] == pytest.approx(best, abs=1e-3)


def test_learning_rate_flags_apply_on_resume(quick_args, tmp_path, capsys):
    assert train.main(quick_args) == 0
    run = tmp_path / "run"
    data = quick_args[quick_args.index("--data-dir") + 1]
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "2", "--data-dir", data,
                       "--lr", "0.0005", "--lr-decay-steps", "100"]) == 0
    gamma = 0.96 ** (1 / 100)
    assert float(rows(run)[1]["lr"]) == pytest.approx(0.0005 * gamma ** 6, rel=1e-4)
    assert json.loads((run / "config.json").read_text())["lr"] == 0.0005
    first = [l for l in capsys.readouterr().out.splitlines() if l.startswith("capsnet:")][-1]
    assert "--lr 0.0005 --lr-decay-steps 100 in effect from step 3" in first


def test_micro_batches_train_what_whole_batches_train_and_a_resume_may_take_others(
        quick_args, tmp_path, capsys):
    """In fp32 the parts' sums differ from the whole batch's only in their order."""
    quick_args = quick_args + ["--precision", "fp32"]
    whole = tmp_path / "whole"
    assert train.main(replace_flag(replace_flag(quick_args, "--epochs", "2"),
                                   "--run-dir", str(whole))) == 0
    assert train.main(quick_args + ["--micro-batch", "12"]) == 0  # parts of 12, 12 and 8
    run = tmp_path / "run"
    data = quick_args[quick_args.index("--data-dir") + 1]
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "2", "--data-dir", data,
                       "--micro-batch", "7"]) == 0
    first = [l for l in capsys.readouterr().out.splitlines() if l.startswith("capsnet:")][-1]
    assert "--micro-batch 7 where the run had 12: the same steps, computed in other parts" in first
    for parts, batches in zip(rows(run), rows(whole), strict=True):
        for key in without_timing([parts])[0]:
            assert float(parts[key]) == pytest.approx(float(batches[key]), rel=1e-4, abs=1e-6)
    a, b = final_weights(run), final_weights(whole)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # a tenth of Adam's step


def test_a_seed_cannot_change_on_resume(quick_args, tmp_path, capsys):
    assert train.main(quick_args) == 0
    code = train.main(["--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "2",
                       "--seed", "7"])
    assert code == 2
    assert "--seed 7 cannot apply to a resumed run" in capsys.readouterr().err


def test_live_logging_counts_batches_on_fast_hardware(data_root, tmp_path):
    """Batches of about a millisecond: the progress bar redraws only every 0.1 s, so its count
    lags; the trainer's own count must trigger every log_every batches."""
    cfg = Config(data_dir=str(data_root), download=False, epochs=1, batch_size=1, log_every=8,
                 visdom=False, shift=0, **SMALL_SETTINGS)
    trainer = Trainer(cfg, RunDir.create(str(tmp_path / "run")))
    trainer.network = fast_network(trainer.model)
    postfixes: list = []
    subscribe(trainer.engine, "on_update",
              lambda state: postfixes.append(trainer.bar.postfix) if trainer.position.batch % 8 == 0 else None)
    trainer.fit()
    assert len(postfixes) == 12 and all(p and "loss=" in p for p in postfixes), postfixes


def test_the_official_recipe_trains_and_its_checkpoint_keeps_it(quick_args, tmp_path, capsys):
    assert train.main(quick_args + ["--recipe", "official"]) == 0
    last = tmp_path / "run" / "last.pt"
    assert load_checkpoint(last)["model_args"]["recipe"] == "official"
    data = quick_args[quick_args.index("--data-dir") + 1]
    assert train.main(["--eval", str(last), "--data-dir", data]) == 0  # the recipe comes along
    capsys.readouterr()
    assert train.main(["--eval", str(last), "--data-dir", data, "--recipe", "paper"]) == 2
    assert "recipe: saved official, now paper" in capsys.readouterr().err


def test_eval_of_several_checkpoints_averages_their_capsule_lengths(quick_args, tmp_path, capsys):
    from capsnet.data.splits import load_split
    from capsnet.model import CapsNet
    runs = [tmp_path / "a", tmp_path / "b"]
    for seed, run in enumerate(runs):
        assert train.main(replace_flag(quick_args, "--run-dir", str(run)) + ["--seed", str(seed)]) == 0
    data = quick_args[quick_args.index("--data-dir") + 1]
    capsys.readouterr()
    paths = [str(run / "last.pt") for run in runs]
    assert train.main(["--eval", *paths, "--data-dir", data]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    test = load_split("mnist", data, False, download=False)
    lengths = []
    for path in paths:
        checkpoint = load_checkpoint(path)
        model = CapsNet(**checkpoint["model_args"])
        model.load_state_dict(checkpoint["model"])
        with torch.no_grad():
            lengths.append(model.eval()(test.images.float() / 255).scores)
    accuracy = 100 * (torch.stack(lengths).mean(0).argmax(1) == test.labels).float().mean()
    assert first.startswith("ensemble of 2") and f"accuracy {accuracy:.2f}%" in first
