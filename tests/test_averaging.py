"""--average-from: the run tests, saves and ships the mean of its epochs' weights, and trains
exactly as it would without it."""
import shutil
from pathlib import Path

import pytest
import torch

import train
from capsnet.averaging import average_into
from capsnet.run.storage import load_checkpoint
from conftest import run_main
from test_train import interrupted_then_resumed, replace_flag, rows, without_timing


@pytest.fixture(scope="module")
def runs(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three epochs averaged from epoch 2, and the same run without an average, trained one
    epoch at a time so that each epoch's weights are kept."""
    from conftest import SMALL
    root = tmp_path_factory.mktemp("averaging")
    common = ["--data-dir", str(data_root), "--no-download", "--batch-size", "32", "--no-visdom",
              *SMALL]
    assert train.main([*common, "--epochs", "3", "--average-from", "2",
                       "--run-dir", str(root / "averaged")]) == 0
    plain = root / "plain"
    assert train.main([*common, "--epochs", "1", "--run-dir", str(plain)]) == 0
    for epoch in (2, 3):
        (plain / f"epoch-{epoch - 1}.pt").write_bytes((plain / "last.pt").read_bytes())
        assert train.main(["--resume", str(plain / "last.pt"), "--epochs", str(epoch),
                           "--data-dir", str(data_root)]) == 0  # not $CAPSNET_DATA_DIR's
    (plain / "epoch-3.pt").write_bytes((plain / "last.pt").read_bytes())
    return {"averaged": root / "averaged", "plain": plain}


def test_the_tested_weights_are_the_mean_of_the_epochs_and_training_is_unchanged(runs):
    averaged = load_checkpoint(runs["averaged"] / "last.pt")
    epochs = [load_checkpoint(runs["plain"] / f"epoch-{k}.pt")["model"] for k in (2, 3)]
    assert averaged["averaged"] == (2, 3)
    assert all(torch.equal(averaged["trained_model"][k], v) for k, v in epochs[1].items())
    for name, value in averaged["model"].items():
        mean = (epochs[0][name] + epochs[1][name]) / 2
        assert torch.allclose(value, mean, atol=1e-7)
        assert not torch.equal(value, epochs[1][name])
    running = average_into(average_into(None, epochs[0], 1), epochs[1], 2)
    assert all(torch.equal(averaged["model"][k], v) for k, v in running.items())  # bit for bit


def test_metrics_name_the_epochs_averaged_and_eval_of_the_checkpoint_scores_its_row(
        runs, data_root, capsys):
    table = rows(runs["averaged"])
    assert [row["averaged_epochs"] for row in table] == ["0", "1", "2"]
    plain = rows(runs["plain"])
    assert without_timing(table[:1]) == without_timing(plain[:1])  # no average yet
    assert [r["train_loss"] for r in table] == [r["train_loss"] for r in plain]
    capsys.readouterr()
    assert train.main(["--eval", str(runs["averaged"] / "last.pt"),
                       "--data-dir", str(data_root)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "epoch 3, the average of the weights after epochs 2-3" in first
    assert f"accuracy {float(table[-1]['test_accuracy']):.2f}%" in first


def test_a_run_interrupted_while_averaging_resumes_to_the_same_average(quick_args, tmp_path,
                                                                      monkeypatch, capsys):
    quick_args = quick_args + ["--average-from", "1"]
    straight = tmp_path / "straight"
    assert train.main(replace_flag(replace_flag(quick_args, "--epochs", "2"),
                                   "--run-dir", str(straight))) == 0
    for name, when in (("mid-epoch", lambda state: state["train"] and state["t"] == 4),
                       ("test pass", lambda state: not state["train"])):  # epoch 1's, averaged
        run = tmp_path / name
        interrupted_then_resumed(quick_args, run, monkeypatch, when)
        assert without_timing(rows(run)) == without_timing(rows(straight))
        for part in ("model", "trained_model"):
            expected, got = load_checkpoint(straight / "last.pt")[part], \
                load_checkpoint(run / "last.pt")[part]
            assert all(torch.equal(expected[k], got[k]) for k in expected), (name, part)


@pytest.mark.parametrize("flags, expected", [
    (["--average-from", "3"], "--average-from 3 is not allowed: use an epoch from 1 to "
                              "--epochs (1), or 0: no average"),
    (["--average-from", "-1"], "--average-from -1 is not allowed"),
])
def test_an_average_outside_the_run_is_refused_in_one_line(flags, expected, quick_args, capsys):
    code, err = run_main(quick_args + flags, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and expected in err


def test_the_epoch_an_average_began_cannot_change_on_resume(runs, capsys):
    code, err = run_main(["--resume", str(runs["averaged"] / "last.pt"), "--epochs", "4",
                          "--average-from", "3"], capsys)
    assert code == 2 and err == ("error: --average-from 3 cannot apply to a resumed run whose "
                                 "checkpoint holds the average of the weights after epochs 2-3: "
                                 "keep --average-from 2")


@pytest.mark.parametrize("first, lost", [(1, "epochs 1-2"), (2, "epoch 2")])
def test_an_average_cannot_begin_at_an_epoch_a_checkpoint_has_passed(first, lost, runs, tmp_path,
                                                                      capsys):
    run = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    before = (run / "epoch-2.pt").read_bytes()
    code, err = run_main(["--resume", str(run / "epoch-2.pt"), "--epochs", "4",
                          "--average-from", str(first)], capsys)
    assert code == 2 and err == (f"error: --average-from {first} cannot apply to a run resumed "
                                 f"after epoch 2 without an average: the weights after {lost} "
                                 "were not kept; use --average-from 3 or later")
    assert (run / "epoch-2.pt").read_bytes() == before


def test_an_average_from_an_epoch_after_the_checkpoint_gives_the_uninterrupted_average(
        runs, data_root, tmp_path):
    run = Path(shutil.copytree(runs["plain"], tmp_path / "plain"))
    (run / "last.pt").write_bytes((run / "epoch-1.pt").read_bytes())
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "3", "--average-from", "2",
                       "--data-dir", str(data_root)]) == 0
    resumed = load_checkpoint(run / "last.pt")
    uninterrupted = load_checkpoint(runs["averaged"] / "last.pt")
    assert resumed["averaged"] == uninterrupted["averaged"] == (2, 3)
    for name, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], value), name


def test_a_shipped_average_says_so_and_scores_its_record(runs, data_root, tmp_path,
                                                          monkeypatch):
    from capsnet.weights.__main__ import ship
    monkeypatch.setenv("CAPSNET_DATA_DIR", str(data_root))  # a shipped record keeps no paths
    record = ship(str(runs["averaged"] / "last.pt"), "tiny", tmp_path, "cpu")
    assert record["selected"] == "the average of the weights after epochs 2-3 (the last epoch)"
    assert record["test_accuracy"] == pytest.approx(float(rows(runs["averaged"])[-1]
                                                          ["test_accuracy"]), abs=0.01)
    assert load_checkpoint(tmp_path / "tiny.pt", weights=True)["averaged"] == (2, 3)
