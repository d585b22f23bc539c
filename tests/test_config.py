"""config.py is the page a researcher edits: its first screen holds the experiment's knobs, its
values are what `python train.py` runs, a name it should not have is refused, and a run records
every setting that differs from the package's defaults."""
import ast
import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from capsnet import train as command
from capsnet.config import Config, values_in

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT_DEFAULTS = {"data_dir", "memory_check"}  # set by CAPSNET_DATA_DIR, CAPSNET_MEMORY_CHECK


def assigned(path: Path) -> list[tuple[str, int]]:
    """The names config.py sets, with their line numbers, in order."""
    tree = ast.parse(path.read_text())
    return [(node.target.id, node.lineno) for node in tree.body if isinstance(node, ast.AnnAssign)]


def edited(tmp_path: Path, **values) -> Path:
    """A copy of config.py with some values replaced."""
    lines = (ROOT / "config.py").read_text().splitlines()
    for name, value in values.items():
        at = next(k for k, line in enumerate(lines) if line.startswith(f"{name}:"))
        kind = lines[at].split(":", 1)[1].split("=", 1)[0].strip()
        lines[at] = f"{name}: {kind} = {value!r}"
    path = tmp_path / "config.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_first_screen_of_config_py_holds_epochs_and_batch_size_first():
    names = assigned(ROOT / "config.py")
    assert [name for name, _ in names[:2]] == ["epochs", "batch_size"]
    assert all(line <= 40 for _, line in names[:2])
    assert sum(line <= 40 for _, line in names) >= 25  # the research knobs, as plain lines


def test_config_py_sets_every_setting_to_the_packages_default(monkeypatch):
    monkeypatch.delenv("CAPSNET_MEMORY_CHECK")
    names = {name for name, _ in assigned(ROOT / "config.py")}
    assert names == {f.name for f in fields(Config)} - ENVIRONMENT_DEFAULTS
    assert values_in(ROOT / "config.py") == {}  # nothing differs: nothing is recorded


@pytest.mark.parametrize("line, message", [
    ("epoch = 3", "'epoch' is not a setting (did you mean 'epochs'?)"),
    ("epochs: int = '3'", "epochs = '3' is not allowed: use a whole number"),
    ("visdom: bool = 1", "visdom = 1 is not allowed: use True or False"),
    ("epochs = ", "does not run: SyntaxError"),
])
def test_a_name_or_value_config_py_cannot_have_is_refused_in_one_line(line, message, tmp_path,
                                                                      quick_args, capsys):
    path = tmp_path / "config.py"
    path.write_text((ROOT / "config.py").read_text() + line + "\n")
    assert command.main(quick_args, config=path) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_config_py_values_are_the_defaults_of_help(tmp_path, capsys):
    with pytest.raises(SystemExit):
        command.main(["--help"], config=edited(tmp_path, epochs=7))
    help_text = " ".join(capsys.readouterr().out.split())
    assert "passes over the training set (default: 7)" in help_text
    with pytest.raises(SystemExit):
        command.main(["--help"])  # python -m capsnet.train: the package's
    assert "passes over the training set (default: 50)" in " ".join(capsys.readouterr().out.split())


def test_editing_config_py_changes_what_train_py_runs_and_the_checkpoint_records_it(
        tmp_path, data_root):
    """train.py beside an edited config.py, run as a user runs it."""
    folder = tmp_path / "repo"
    folder.mkdir()
    shutil.copy(ROOT / "train.py", folder)
    edited(folder, epochs=2, batch_size=16, conv1_channels=16, primary_types=4, class_dim=8,
           visdom=False)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "train.py", "--data-dir", str(data_root),
                           "--no-download", "--run-dir", str(run),
                           "--train-samples", "32", "--test-samples", "16"],
                          cwd=folder, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert (config["epochs"], config["batch_size"], config["conv1_channels"]) == (2, 16, 16)
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # a header and two epochs
    command_line = torch.load(run / "last.pt", weights_only=True)["commands"][0]
    assert "--epochs 2 --batch-size 16" in command_line and "--no-visdom" in command_line


def test_a_flag_wins_over_config_py(tmp_path, quick_args):
    assert command.main(quick_args, config=edited(tmp_path, epochs=3)) == 0  # quick_args: 1
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 2


def test_a_resumed_run_keeps_its_settings_over_config_py(tmp_path, quick_args):
    assert command.main(quick_args) == 0
    last = tmp_path / "run" / "last.pt"
    config = edited(tmp_path, lr=0.5, batch_size=16)
    assert command.main(["--resume", str(last), "--epochs", "2"], config=config) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["lr"], saved["batch_size"]) == (0.001, 32)
