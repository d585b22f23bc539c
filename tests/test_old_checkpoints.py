"""Checkpoints written by earlier versions keep working: tests/old-run holds last.pt and best.pt
of a one-epoch run of a tiny CapsNet on the made digits (conftest.write_dataset), written by the
package before its fast kernels moved into the model and its settings into the package. They
resume, evaluate to the accuracy their run recorded, and ship."""
import csv
import shutil
from pathlib import Path

import pytest
import torch

import capsnet
import train
from capsnet.weights.__main__ import main as ship_main
from conftest import write_dataset

OLD = Path(__file__).parent / "old-run"


def recorded_test_accuracy() -> float:
    with open(OLD / "metrics.csv", newline="") as f:
        return float(next(csv.DictReader(f))["test_accuracy"])


@pytest.fixture(scope="module")
def old_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The made digits the old run trained and tested on (the same seeds and counts)."""
    return write_dataset(tmp_path_factory.mktemp("old-data"))


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the old run's directory: the tests change it, never the committed files."""
    return Path(shutil.copytree(OLD, tmp_path / "old-run"))


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_an_old_checkpoint_evaluates_to_the_accuracy_its_run_recorded(name, old_run, old_data,
                                                                       capsys):
    assert train.main(["--eval", str(old_run / name), "--data-dir", str(old_data)]) == 0
    assert f"accuracy {recorded_test_accuracy():.2f}%" in capsys.readouterr().out


def test_an_old_checkpoint_resumes_for_another_epoch(old_run, old_data, capsys):
    assert train.main(["--resume", str(old_run / "last.pt"), "--epochs", "2",
                       "--data-dir", str(old_data), "--no-visdom"]) == 0
    with open(old_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    with open(OLD / "metrics.csv", newline="") as f:
        first = next(csv.DictReader(f))  # its earlier column names: train_margin, test_margin
    assert rows[0]["train_score_loss"] == first["train_margin"]
    assert rows[0]["test_score_loss"] == first["test_margin"]
    assert "resumed from" in capsys.readouterr().out


def test_an_old_checkpoint_ships_and_loads_as_a_pretrained_model(old_run, old_data, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setenv("CAPSNET_DATA_DIR", str(old_data))
    out = tmp_path / "shipped"
    assert ship_main([str(old_run / "last.pt"), "tiny", "--out", str(out), "--device", "cpu"]) == 0
    record = capsnet.weights.record_of("tiny", out)
    # float16 weights: one image of 48 may change its class
    assert abs(record["test_accuracy"] - recorded_test_accuracy()) <= 100 / 48 + 0.01
    model = capsnet.pretrained("tiny", folder=out)
    assert model(torch.rand(2, 1, 28, 28)).scores.shape == (2, 10)


def test_a_mid_epoch_checkpoints_earlier_meter_name_still_restores_and_the_old_aliases_are_gone():
    from capsnet import compat
    from capsnet.loss import CapsuleLoss
    from capsnet.meters import Meters
    model = capsnet.pretrained("mnist")
    output = model(torch.rand(2, 1, 28, 28))
    parts = CapsuleLoss().parts(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), output)
    assert not hasattr(output, "lengths") and not hasattr(parts, "margin")  # README: Changes
    meters = Meters(10)  # a mid-epoch checkpoint of format 1 names a meter "margin"
    meters.add(output.scores, torch.tensor([0, 1]), parts)
    state = meters.state_dict()
    state["margin"] = state.pop("score_loss")
    earlier = {"config": {}, "model_args": {"conv1_channels": 16}, "meters": [state]}
    upgraded = compat.upgraded(earlier)
    assert upgraded["format"] == compat.CHECKPOINT_FORMAT
    assert upgraded["model_args"] == {"routing": "dynamic", "primary_norm": "squash",
                                      "conv1_channels": 16}
    restored = Meters(10)
    restored.load_state_dict(upgraded["meters"][0])
    assert restored.totals().summary() == meters.totals().summary()
