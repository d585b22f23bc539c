"""The library stands alone: installed (not editable) from a copy of the package's files, it
imports, loads its shipped model, predicts, and trains from an empty directory with no config.py
beside it (its dependencies are this environment's)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import SMALL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process that sees the installed package and not the repository."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "capsnet", source / "capsnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--no-index", "--target", str(site),
                           str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return {**os.environ, "PYTHONPATH": str(site)}


def run(args: list[str], where: Path, environment: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=where, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_the_installed_package_loads_its_model_and_predicts_from_an_empty_directory(
        installed, tmp_path):
    digit = torch.zeros(28, 28, dtype=torch.uint8)
    digit[4:24, 12:16] = 255  # a "1"
    Image.fromarray(digit.numpy()).save(tmp_path / "one.png")
    done = run(["-c", "import capsnet, torch; print(capsnet.__file__); "
                "print(capsnet.pretrained('mnist')(torch.rand(2, 1, 28, 28)).scores.shape)"],
               tmp_path, installed)
    assert done.returncode == 0, done.stderr
    where, shape = done.stdout.splitlines()
    assert where.startswith(installed["PYTHONPATH"]) and shape == "torch.Size([2, 10])"
    done = run(["-m", "capsnet.predict", "--pretrained", "mnist", "one.png"], tmp_path, installed)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("one.png: 1 ")


def test_the_installed_package_trains_with_its_own_defaults(installed, tmp_path, data_root):
    done = run(["-m", "capsnet.train", "--help"], tmp_path, installed)
    assert done.returncode == 0 and "(defaults: the package's)" in done.stdout
    done = run(["-m", "capsnet.train", "--data-dir", str(data_root), "--no-download",
                "--epochs", "1", "--batch-size", "32", "--no-visdom", "--no-memory-check",
                "--run-dir", "run", *SMALL], tmp_path, installed)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "last.pt").is_file() and not (tmp_path / "config.py").exists()
