"""Shared fixtures: small IDX datasets written in torchvision's MNIST layout."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import torch

# Each training run would first measure a step in a separate process (a few seconds); the suite
# starts dozens of runs, so the check is off here and tested on its own (test_footprint.py).
os.environ.setdefault("CAPSNET_MEMORY_CHECK", "0")
# `make test` runs the files in parallel workers (pytest -n): each worker, and every process it
# starts (OMP_NUM_THREADS), takes its share of the cores, where PyTorch's default, every core in
# every worker, would oversubscribe them.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    THREADS = max(1, (CORES or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# make test hands whole files to its workers in the order collected: the longest start first, so
# that no worker is left alone with one of them at the end
LONGEST_FIRST = ("test_devicecheck.py", "test_distributed.py", "test_real_mnist.py",
                 "test_pretrained.py", "test_train.py", "test_install.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable within a file


SMALL = ["--conv1-channels", "16", "--primary-types", "4", "--class-dim", "8"]  # a tiny CapsNet
SMALL_SETTINGS = {"conv1_channels": 16, "primary_types": 4, "class_dim": 8}  # as Config fields
TRAIN, TEST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), \
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(folder: Path, names: tuple[str, str], images: torch.Tensor, labels: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / names[0]).write_bytes(struct.pack(">IIII", 0x0803, n, h, w)
                                    + images.to(torch.uint8).numpy().tobytes())
    (folder / names[1]).write_bytes(struct.pack(">II", 0x0801, n)
                                    + labels.to(torch.uint8).numpy().tobytes())


def made_digits(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 28x28 images: a bright 6x6 block whose place encodes the class, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    images = torch.randint(0, 40, (count, 28, 28), generator=g)
    for k, label in enumerate(labels.tolist()):
        row, col = 4 + 6 * (label // 4), 4 + 6 * (label % 4)
        images[k, row:row + 6, col:col + 6] = 250
    return images, labels


def write_dataset(root: Path, train: int = 96, test: int = 48, name: str = "MNIST") -> Path:
    raw = root / name / "raw"
    write_idx(raw, TRAIN, *made_digits(train, 0))
    write_idx(raw, TEST, *made_digits(test, 1))
    return root


@pytest.fixture(autouse=True)
def no_dataset_root_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed or evaluated run takes $CAPSNET_DATA_DIR (which `make test` points at real
    MNIST) before the checkpoint's dataset root: tests that want it set it themselves."""
    monkeypatch.delenv("CAPSNET_DATA_DIR", raising=False)


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """train.main's exit status (returned or raised) and its stderr, stripped."""
    import train
    try:
        code = train.main(args)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def quick_args(data_root: Path, tmp_path: Path) -> list[str]:
    """train.py flags for a run of a second or two on the made data, with a tiny CapsNet (the
    tests of the paper's widths give their own)."""
    return ["--data-dir", str(data_root), "--no-download", "--epochs", "1", "--batch-size", "32",
            "--no-visdom", "--run-dir", str(tmp_path / "run"), *SMALL]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A Visdom server started through capsnet.dashboard for the whole session."""
    from visdom_server import Server, free_port
    running = Server(free_port(), tmp_path_factory.mktemp("visdom")).start()
    yield running
    running.stop()


def fast_network(model):
    """A stand-in for CapsNet whose batches take about a millisecond (as on a GPU): outputs of
    the right shapes, differentiable in one of the model's parameters."""
    from capsnet.model import CapsNetOutput
    weight = model.decoder.layers[0].bias

    def network(images, labels=None, objects=1):
        batch = images.shape[0]
        lengths = torch.sigmoid(weight[:10]).expand(batch, 10)
        poses = weight[:16].expand(batch, 10, 16)
        return CapsNetOutput(lengths, poses, images * torch.sigmoid(weight[0]))
    return network


TINY_BASELINE = ["--model", "baseline", "--baseline-channels", "8,8,4", "--baseline-hidden", "16,8"]


@pytest.fixture(scope="session")
def tiny_checkpoints(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """last.pt of one-epoch runs on the made digits, shared by the tests that only read them:
    a tiny CapsNet ("capsnet") and a tiny baseline ("baseline"). Copy one before changing it."""
    import train
    root = tmp_path_factory.mktemp("tiny")
    made = {}
    for name, extra in (("capsnet", SMALL), ("baseline", TINY_BASELINE)):
        assert train.main(["--data-dir", str(data_root), "--no-download", "--epochs", "1",
                           "--batch-size", "32", "--no-visdom",
                           "--run-dir", str(root / name), *extra]) == 0
        made[name] = root / name / "last.pt"
    return made
