"""Each dataset's reader on small files written in its real on-disk format, through train.py."""
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from capsnet.data.splits import load_split
from capsnet.data.datasets import DATASETS
from capsnet.errors import UserError
from conftest import run_main, write_dataset


def pattern(count: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: a bright square whose place encodes the class (0-9), plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = rng.integers(0, 40, (count, channels, size, size), dtype=np.uint8)
    for k, label in enumerate(labels):
        row, col = 3 + 6 * (label // 4), 3 + 6 * (label % 4)
        images[k, :, row:row + 6, col:col + 6] = 250
    return images, labels


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2 did the CIFAR-10 files: bytes (Python 2's str) as BINSTRING, which
    Python 3 reads back as str or bytes depending on the unpickler's encoding."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        size = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([size]) if size < 256 else
                    pickle.BINSTRING + struct.pack("<i", size)) + obj)
        self.memoize(obj)
    dispatch[bytes] = save_bytes


def dumps(value: dict, kind: str) -> bytes:
    """A CIFAR pickle: "python2" as the original files are; "python3" as Python 3 writes a
    dict of str keys."""
    if kind == "python3":
        return pickle.dumps({k.decode(): v for k, v in value.items()})
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump(value)
    return out.getvalue()


def write_cifar(root: Path, train: int = 64, test: int = 32, kind: str = "python2") -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    meta = {b"label_names": names if kind == "python2" else [n.decode() for n in names]}
    (folder / "batches.meta").write_bytes(dumps(meta, kind))
    images, labels = pattern(train, 3, 32, 0)
    for k, chunk in enumerate(np.array_split(np.arange(train), 5), start=1):
        batch = {b"data": images[chunk].reshape(len(chunk), -1), b"labels": labels[chunk].tolist()}
        (folder / f"data_batch_{k}").write_bytes(dumps(batch, kind))
    images, labels = pattern(test, 3, 32, 1)
    (folder / "test_batch").write_bytes(dumps(
        {b"data": images.reshape(test, -1), b"labels": labels.tolist()}, kind))
    return root


def write_svhn(root: Path, train: int = 64, test: int = 32) -> Path:
    import scipy.io
    folder = root / "SVHN"
    folder.mkdir(parents=True)
    for name, count, seed in (("train_32x32.mat", train, 0), ("test_32x32.mat", test, 1)):
        images, labels = pattern(count, 3, 32, seed)
        y = np.where(labels == 0, 10, labels).reshape(-1, 1)  # the files' 10 for digit 0
        scipy.io.savemat(folder / name, {"X": images.transpose(2, 3, 1, 0), "y": y})
    return root


def write_folder(root: Path, train: int = 40, test: int = 20, mode: str = "L") -> Path:
    from PIL import Image
    for split, count, seed in (("train", train, 0), ("test", test, 1)):
        images, labels = pattern(count, 1 if mode == "L" else 3, 30, seed)
        for k, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class{label % 4}"  # four classes
            folder.mkdir(parents=True, exist_ok=True)
            array = image[0] if mode == "L" else image.transpose(1, 2, 0)
            Image.fromarray(array, mode).save(folder / f"{k}.png")
    return root


def test_every_dataset_is_one_entry_and_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in DATASETS:
        assert name in out


@pytest.mark.parametrize("name, write, shape, first_class", [
    ("cifar10", write_cifar, (3, 32, 32), "airplane"),
    ("cifar10", lambda root: write_cifar(root, kind="python3"), (3, 32, 32), "airplane"),
    ("svhn", write_svhn, (3, 32, 32), "0"),
    ("fashion-mnist", lambda root: write_dataset(root, 64, 32, name="FashionMNIST"),
     (1, 28, 28), "T-shirt"),
])
def test_a_reader_gives_the_written_images(name, write, shape, first_class, tmp_path):
    root = write(tmp_path)
    train_split = load_split(name, str(root), True, download=False)
    test_split = load_split(name, str(root), False, download=False)
    assert train_split.images.shape[1:] == shape and train_split.images.dtype == torch.uint8
    assert len(train_split) == 64 and len(test_split) == 32
    assert train_split.classes[0] == first_class and len(train_split.classes) == 10
    assert torch.equal(train_split.labels[:10], torch.arange(10))
    if name != "fashion-mnist":
        images, _ = pattern(64, 3, 32, 0)
        assert torch.equal(train_split.images, torch.from_numpy(images))


@pytest.mark.parametrize("name, write", [("cifar10", write_cifar), ("svhn", write_svhn),
                                         ("folder", write_folder)])
def test_train_py_runs_an_epoch_on_each_dataset(name, write, tmp_path, capsys):
    root = write(tmp_path / "data")
    args = ["--dataset", name, "--data-dir", str(root), "--no-download", "--epochs", "1",
            "--batch-size", "16", "--no-visdom", "--run-dir", str(tmp_path / "run")]
    assert train.main(args + (["--image-size", "28"] if name == "folder" else [])) == 0
    out = capsys.readouterr().out
    assert f"capsnet: {name}, " in out and "testing on" in out and "epoch 1/1" in out
    assert train.main(["--eval", str(tmp_path / "run" / "last.pt"), "--data-dir", str(root)]) == 0


def test_the_folder_dataset_reads_grey_and_colour_and_resizes(tmp_path):
    grey = load_split("folder", str(write_folder(tmp_path / "grey")), True, False, image_size=28)
    colour = load_split("folder", str(write_folder(tmp_path / "colour", mode="RGB")), True, False,
                        image_size=36)
    assert grey.images.shape == (40, 1, 28, 28) and colour.images.shape == (40, 3, 36, 36)
    assert grey.classes == ("class0", "class1", "class2", "class3")


@pytest.mark.parametrize("break_it, message", [
    (lambda root: [p.unlink() for p in (root / "train").rglob("*.png")],
     "holds no images"),
    (lambda root: __import__("shutil").rmtree(root / "test" / "class3"),
     "must hold the classes of"),
    (lambda root: (root / "train" / "class0" / "0.png").write_bytes(b"not a png"),
     "0.png is not a readable image"),
    (lambda root: write_folder(root / "x", mode="RGB") and
     (root / "x" / "train" / "class1" / "1.png").rename(root / "train" / "class1" / "rgb.png"),
     "is in colour; use images of one kind"),
])
def test_a_broken_folder_is_one_line(break_it, message, tmp_path, capsys):
    root = write_folder(tmp_path / "data")
    break_it(root)
    code, err = run_main(["--dataset", "folder", "--data-dir", str(root), "--no-download",
                          "--epochs", "1", "--no-visdom", "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_damaged_files_are_one_line(tmp_path):
    root = write_cifar(tmp_path / "c")
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(UserError, match="test_batch is not a CIFAR batch"):
        load_split("cifar10", str(root), False, download=False)
    root = write_svhn(tmp_path / "s")
    (root / "SVHN" / "test_32x32.mat").write_bytes(b"garbage")
    with pytest.raises(UserError, match="test_32x32.mat is not a readable .mat file"):
        load_split("svhn", str(root), False, download=False)
    with pytest.raises(UserError, match="svhn files are missing"):
        load_split("svhn", str(tmp_path / "none"), True, download=False)


def test_the_svhn_preset_sets_the_papers_smaller_network(tmp_path, capsys):
    from capsnet.run.storage import load_checkpoint
    root = write_svhn(tmp_path / "data")
    args = ["--preset", "svhn", "--data-dir", str(root), "--no-download", "--epochs", "1",
            "--batch-size", "16", "--no-visdom"]
    assert train.main(args + ["--run-dir", str(tmp_path / "a")]) == 0
    saved = load_checkpoint(tmp_path / "a" / "last.pt")["model_args"]
    assert (saved["in_channels"], saved["conv1_channels"], saved["primary_types"],
            saved["primary_dim"], saved["class_dim"]) == (3, 64, 16, 6, 8)
    assert "4,720,480 parameters" in capsys.readouterr().out
    assert train.main(args + ["--class-dim", "4", "--run-dir", str(tmp_path / "b")]) == 0
    assert load_checkpoint(tmp_path / "b" / "last.pt")["model_args"]["class_dim"] == 4


def test_the_cifar10_preset_crops_and_routes_with_none_of_the_above(tmp_path, capsys):
    from capsnet.run.storage import load_checkpoint
    root = write_cifar(tmp_path / "data")
    assert train.main(["--preset", "cifar10", "--data-dir", str(root), "--no-download",
                       "--epochs", "1", "--batch-size", "16", "--no-visdom",
                       "--run-dir", str(tmp_path / "run")]) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    saved = checkpoint["model_args"]
    assert (saved["image_size"], saved["primary_types"], saved["leaky_routing"]) == (24, 64, True)
    assert checkpoint["config"]["crop"] == 24 and checkpoint["config"]["shift"] == 0
    assert train.main(["--eval", str(tmp_path / "run" / "last.pt"), "--data-dir", str(root)]) == 0
