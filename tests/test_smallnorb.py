"""smallNORB's reader on files written in NORB's binary-matrix format, through train.py and --eval."""
import gzip
import struct

import numpy as np
import pytest
import torch

import train
from capsnet.data.splits import load_split
from capsnet.data.datasets import DATASETS
from capsnet.data.smallnorb import NorbBatches, standardise
from capsnet.errors import UserError
from conftest import run_main


def matrix(array: np.ndarray) -> bytes:
    """NORB's binary matrix: magic, ndim, max(3, ndim) sizes, then the data (little-endian)."""
    magic = 0x1E3D4C55 if array.dtype == np.uint8 else 0x1E3D4C54
    sizes = list(array.shape) + [1] * (3 - array.ndim)
    return struct.pack(f"<ii{len(sizes)}i", magic, array.ndim, *sizes) + \
        array.astype("<i4" if array.dtype != np.uint8 else np.uint8).tobytes()


def write_norb(root, count: int = 20, gzipped: bool = False):
    folder = root / "smallNORB"
    folder.mkdir(parents=True)
    entry = DATASETS["smallnorb"]
    for train_split, seed in ((True, 0), (False, 1)):
        rng = np.random.default_rng(seed)
        labels = np.arange(count) % 5
        pairs = rng.integers(0, 60, (count, 2, 96, 96), dtype=np.uint8)
        for k, label in enumerate(labels):  # a bright square whose place encodes the class
            pairs[k, :, 10 + 15 * label:34 + 15 * label, 30:54] = 240
        info = np.zeros((count, 4), dtype=np.int32)
        for name, array in zip(entry.files(train_split), (pairs, labels.astype(np.int32), info)):
            data = matrix(array)
            if gzipped:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return root


@pytest.mark.parametrize("gzipped", [False, True])
def test_the_reader_reads_binary_matrices_plain_or_gzipped_and_resizes_to_48(tmp_path, gzipped):
    root = write_norb(tmp_path, gzipped=gzipped)
    split = load_split("smallnorb", str(root), True, download=False)
    assert split.images.shape == (20, 2, 48, 48) and split.images.dtype == torch.uint8
    assert split.labels.tolist() == [k % 5 for k in range(20)]
    assert split.classes == ("animal", "human", "airplane", "truck", "car")
    assert split.images[1, 0, 18, 20] > 200  # the square of class 1: rows 25-48 of 96


def test_damaged_files_are_one_line(tmp_path):
    root = write_norb(tmp_path)
    dat = root / "smallNORB" / DATASETS["smallnorb"].files(False)[0]
    dat.write_bytes(dat.read_bytes()[:-10])  # truncated
    with pytest.raises(UserError, match="its header says .* but it holds"):
        load_split("smallnorb", str(root), False, download=False)
    dat.write_bytes(b"\x00" * 40)
    with pytest.raises(UserError, match="is not a NORB binary matrix"):
        load_split("smallnorb", str(root), False, download=False)
    cat = root / "smallNORB" / DATASETS["smallnorb"].files(True)[1]
    cat.write_bytes(matrix(np.full(20, 7, dtype=np.int32)))
    with pytest.raises(UserError, match="label 7; smallNORB has 5 classes"):
        load_split("smallnorb", str(root), True, download=False)


def test_training_crops_are_augmented_and_standardised_and_test_crops_are_central(tmp_path):
    root = write_norb(tmp_path)
    split = load_split("smallnorb", str(root), True, download=False)
    g = torch.Generator().manual_seed(0)
    trained = next(iter(NorbBatches(split, 20, shuffle=True, crop=32, generator=g)))
    tested = next(iter(NorbBatches(split, 20, crop=32)))
    for sample in (trained, tested):
        assert sample.images.shape == sample.targets.shape == (20, 2, 32, 32)
        flat = sample.images.flatten(1)
        assert torch.allclose(flat.mean(1), torch.zeros(20), atol=1e-5)
        assert torch.allclose(flat.std(1, unbiased=False), torch.ones(20), atol=1e-4)
        assert 0 <= sample.targets.min() and sample.targets.max() <= 1  # the [0, 1] crop
    centre = split.images[:, :, 8:40, 8:40].float() / 255
    assert torch.equal(tested.targets, centre)  # the centre crop, no photometric change
    assert torch.allclose(tested.images, standardise(centre), atol=1e-6)
    # in training: the brightness and contrast change the standardised image only through the
    # contrast of each channel against the other, so compare the crops' own standardisation
    assert not torch.allclose(trained.images, standardise(trained.targets), atol=1e-3)


def test_train_py_and_eval_on_smallnorb(tmp_path, capsys):
    root = write_norb(tmp_path / "data", gzipped=True)
    run = tmp_path / "run"
    code, err = run_main(["--preset", "smallnorb", "--data-dir", str(root), "--no-download",
                          "--epochs", "1", "--batch-size", "10", "--no-visdom",
                          "--conv1-channels", "16", "--primary-types", "4", "--class-dim", "8",
                          "--run-dir", str(run)], capsys)
    assert code == 0, err
    assert train.main(["--eval", str(run / "last.pt"), "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "on smallnorb (20 images)" in out and "truck" in out


def test_the_dashboard_shows_the_first_view_of_each_pair(server, tmp_path, capsys):
    from test_dashboard import dashboard_args, window
    root = write_norb(tmp_path / "data")
    args = ["--preset", "smallnorb", "--data-dir", str(root), "--no-download", "--batch-size",
            "10", "--conv1-channels", "16", "--primary-types", "4",
            "--class-dim", "8", "--run-dir", str(tmp_path / "run")]
    assert train.main(dashboard_args(args, server.port, "norb", epochs=1)) == 0
    assert "warning" not in capsys.readouterr().err
    for name in ("images", "reconstructions", "by_mask", "routing"):
        assert window(server.port, "norb", name)["type"] == "image", name
