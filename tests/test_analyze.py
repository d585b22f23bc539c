"""capsnet.analyze: the figures' grids against the model, and the command on a made checkpoint."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train
from capsnet import analyze
from capsnet.dashboard import figures
from capsnet.model import CapsNet
from conftest import SMALL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> CapsNet:
    torch.manual_seed(0)
    return CapsNet().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_perturbation_middle_column_is_the_plain_reconstruction(model, images):
    grid, predicted = figures.perturbed(model, images[0])
    assert grid.shape == (16, 11, 1, 28, 28)
    with torch.no_grad():
        plain = model(images[:1]).reconstructions[0]  # masked by the predicted class
    assert predicted == int(model(images[:1]).scores.argmax())
    for row in range(16):
        assert torch.allclose(grid[row, 5], plain, atol=1e-6)
    assert not torch.allclose(grid[0, 0], plain, atol=1e-4)  # the tweaks change the image


def test_by_mask_true_class_column_is_the_reconstruction_masked_by_the_label(model, images):
    labels = torch.tensor([4, 0, 7])
    grid = figures.by_mask(model, images)
    assert grid.shape == (3, 11, 1, 28, 28) and torch.equal(grid[:, 0], images)
    with torch.no_grad():
        expected = model(images, labels).reconstructions
    for b, label in enumerate(labels.tolist()):
        assert torch.allclose(grid[b, 1 + label], expected[b], atol=1e-6)


def test_coupling_sums_to_one_and_is_what_routing_returns(model, images):
    with torch.no_grad():
        output = model(images)
        u = model.primary(F.relu(model.conv1(images)))
        coupling = model.digits(u).coupling
    assert output.coupling.shape == (3, 10, 1152)
    assert torch.allclose(output.coupling.sum(dim=1), torch.ones(3, 1152), atol=1e-5)
    assert torch.allclose(output.coupling, coupling)
    maps = figures.routing_maps(model, images)
    assert maps.shape == (3, 10, 6, 6)
    assert torch.allclose(maps.sum(dim=1), torch.full((3, 6, 6), 32.0), atol=1e-3)


def test_the_mistakes_figure_labels_its_columns_apart(model, images):
    g = torch.Generator().manual_seed(2)
    pictures = torch.rand(8, 1, 28, 28, generator=g)
    lengths, labels = torch.rand(8, 10, generator=g), torch.randint(0, 10, (8,), generator=g)
    labels[labels == lengths.argmax(dim=1)] += 1  # every one a mistake
    pred = analyze.Predictions(pictures, labels % 10, lengths)
    fig = analyze.figure_mistakes(analyze.Context(model, pred, tuple("0123456789"), 1,
                                                  torch.device("cpu")))
    fig.canvas.draw()
    boxes = [label.get_window_extent() for label in fig.axes[0].get_xticklabels()]
    assert len(boxes) == 3
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:]))


@pytest.fixture(scope="module")
def checkpoint(data_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("analyze") / "run"
    assert train.main(["--data-dir", str(data_root), "--no-download", "--epochs", "1",
                       "--batch-size", "32", "--no-visdom",
                       "--run-dir", str(run), *SMALL]) == 0  # the figures of any width
    return run / "last.pt"


def command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capsnet.analyze", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_command_writes_every_figure_and_an_index(checkpoint, data_root, tmp_path):
    out = tmp_path / "figures"
    result = command(str(checkpoint), "--out", str(out), "--per-class", "1",
                     "--data-dir", str(data_root))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"(open {out / 'index.html'})")
    index = (out / "index.html").read_text()
    for name, _, _ in analyze.FIGURES:
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
        assert f'<img src="{name}"' in index
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [name for name, _, _ in analyze.FIGURES] + ["index.html"])


@pytest.mark.parametrize("args, message", [
    (["--per-class", "0"], "--per-class 0 is not allowed: use a number from 1 to 20"),
    (["--out", "/proc/capsnet-figures"], "could not create the directory /proc/capsnet-figures"),
])
def test_bad_input_is_one_line(args, message, checkpoint, data_root, capsys):
    """Through the command's main (the command line itself is the test above's)."""
    assert analyze.main([str(checkpoint), "--data-dir", str(data_root), *args]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}" + (
        "" if "per-class" in message else " (No such file or directory)")


def test_a_missing_or_damaged_checkpoint_is_one_line(tmp_path, capsys):
    assert analyze.main([str(tmp_path / "gone.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    damaged = tmp_path / "last.pt"
    damaged.write_bytes(b"not a checkpoint")
    assert analyze.main([str(damaged), "--out", str(tmp_path / "figures")]) == 2
    err = capsys.readouterr().err
    assert "not a readable capsnet checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "figures").exists()


def test_a_failure_halfway_leaves_no_figures_behind(checkpoint, data_root, tmp_path, monkeypatch):
    from capsnet.errors import UserError
    from capsnet.run.storage import WriteError

    def full_disk(ctx):
        raise WriteError("could not write routing.png (No space left on device)")
    figures = [(name, text, full_disk if name == "routing.png" else draw)
               for name, text, draw in analyze.FIGURES]
    monkeypatch.setattr(analyze, "FIGURES", figures)
    out = tmp_path / "figures"
    with pytest.raises(UserError, match="No space left on device"):
        analyze.analyze(str(checkpoint), str(out), 1, {"data_dir": str(data_root)})
    assert not out.exists()  # the figures before it are gone, no index.html, nor the folder


def test_a_baseline_checkpoint_is_refused_without_leaving_a_folder(tiny_checkpoints, tmp_path,
                                                                    capsys):
    out = tmp_path / "figures"
    assert analyze.main([str(tiny_checkpoints["baseline"]), "--out", str(out)]) == 2
    assert "is a baseline checkpoint" in capsys.readouterr().err
    assert not out.exists()
