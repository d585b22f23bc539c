import urllib.error
from pathlib import Path

import pytest
import torch

import torchvision

from capsnet.data.records import Split
from capsnet.data.splits import load_split
from capsnet.data.batches import Batches, shift_images
from capsnet.errors import UserError
from conftest import TEST, made_digits, write_dataset, write_idx


def test_loads_idx_files_through_torchvision(data_root: Path):
    train = load_split("mnist", str(data_root), True, download=False)
    test = load_split("mnist", str(data_root), False, download=False, limit=10)
    assert train.images.shape == (96, 1, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 10 and train.classes == tuple("0123456789")
    assert torch.equal(train.labels[:12], torch.arange(12) % 10)


def test_fashion_mnist_reads_its_own_folder(tmp_path: Path):
    write_dataset(tmp_path, 20, 10, name="FashionMNIST")
    split = load_split("fashion-mnist", str(tmp_path), False, download=False)
    assert len(split) == 10 and split.classes[0] == "T-shirt"


def test_missing_files_name_the_folder_and_the_files(tmp_path: Path):
    with pytest.raises(UserError) as error:
        load_split("mnist", str(tmp_path), True, download=False)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # the training split's
        assert name in message


def test_a_failed_download_is_one_line_that_keeps_each_mirrors_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def offline(url, download_root, filename, md5):
        raise urllib.error.URLError(f"no route to {url.split('/')[2]}")
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as error:
        load_split("mnist", str(tmp_path), True, download=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith("mnist could not be downloaded")
    for mirror in torchvision.datasets.MNIST.mirrors:
        assert f"no route to {mirror.split('/')[2]}" in message


def test_the_test_split_downloads_its_own_files_alone(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """What --eval needs: the test files, never the training split's."""
    made = tmp_path / "made"
    write_idx(made, TEST, *made_digits(20, 1))
    fetched = []

    def served(url, download_root, filename, md5):
        fetched.append(url)
        name = filename.removesuffix(".gz")
        (Path(download_root) / name).write_bytes((made / name).read_bytes())
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", served)
    split = load_split("mnist", str(tmp_path / "root"), False, download=True)
    assert len(split) == 20
    mirror = torchvision.datasets.MNIST.mirrors[0]
    assert fetched == [mirror + "t10k-images-idx3-ubyte.gz", mirror + "t10k-labels-idx1-ubyte.gz"]


def test_corrupt_files_are_reported(tmp_path: Path):
    write_dataset(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(UserError, match="could not be read"):
        load_split("mnist", str(tmp_path), True, download=False)


def split_of(count: int) -> Split:
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 28, 28)
    return Split(images.contiguous(), torch.arange(count), tuple("0123456789"))


def test_shuffled_batches_cover_every_example_once_per_pass():
    batches = Batches(split_of(50), 16, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 4
    samples = list(batches)
    assert [len(s.labels) for s in samples] == [16] * 4  # one shape: the last is filled up
    assert samples[-1].weights.tolist() == [1.0] * 2 + [0.0] * 14  # with weight-0 examples
    seen = torch.cat([sample.real().labels for sample in samples])
    assert sorted(seen.tolist()) == list(range(50)) and seen.tolist() != list(range(50))
    images, labels, _, _ = next(iter(batches))
    assert images.dtype == torch.float32 and images.max() <= 1
    assert torch.allclose(images[:, 0, 5, 5] * 255, labels.float())


def test_unshuffled_unshifted_batches_are_the_images_in_order():
    batches = Batches(split_of(10), 4)
    labels = torch.cat([sample.labels for sample in batches])
    assert labels.tolist() == list(range(10)) + [0, 1] and len(batches) == 3  # filled by 0, 1
    weights = torch.cat([sample.weights for sample in batches])
    assert weights.tolist() == [1.0] * 10 + [0.0] * 2


def test_shift_moves_each_image_by_its_own_offset_with_zero_fill():
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 10:14, 12:15] = 200
    padded = torch.nn.functional.pad(image.expand(3, 1, 28, 28), (2,) * 4)
    offsets = torch.tensor([[2, 2], [0, 4], [4, 1]])  # (dy, dx) = offset - 2: 0/0, -2/+2, +2/-1
    shifted = shift_images(padded, offsets, 28)
    assert torch.equal(shifted[0], image)
    for k, (dy, dx) in enumerate([(-2, 2), (2, -1)], start=1):
        expected = torch.zeros_like(image)
        expected[0, 10 - dy:14 - dy, 12 - dx:15 - dx] = 200
        assert torch.equal(shifted[k], expected)


def test_training_shifts_stay_within_two_pixels_and_differ_per_image():
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 12:16, 12:16] = 255
    split = Split(image.expand(200, 1, 28, 28).contiguous(), torch.zeros(200, dtype=torch.long),
                  tuple("0123456789"))
    batches = Batches(split, 200, shuffle=True, shift=2, generator=torch.Generator().manual_seed(0))
    images = next(iter(batches)).images
    rows = images[:, 0].sum(dim=2).argmax(dim=1) - 12  # top row of the block moved by dy
    cols = images[:, 0].sum(dim=1).argmax(dim=1) - 12
    assert rows.min() == -2 and rows.max() == 2 and cols.min() == -2 and cols.max() == 2
    assert torch.allclose(images.sum(dim=(1, 2, 3)), torch.full((200,), 16.0))  # nothing lost


def test_crops_are_random_in_training_and_central_at_test():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    split = Split(images, torch.arange(20) % 10, tuple("0123456789"))
    test_images, _, _, _ = next(iter(Batches(split, 20, crop=24)))
    assert torch.equal(test_images, images[:, :, 4:28, 4:28].float() / 255)
    train = Batches(split, 20, shuffle=True, crop=24, generator=g)
    crops, labels, _, _ = next(iter(train))
    assert crops.shape == (20, 3, 24, 24)
    places = set()
    for crop, label in zip(crops, labels):
        source = images[int(label)::10]  # the two images of this label
        found = [(r, c) for image in source for r in range(9) for c in range(9)
                 if torch.equal(crop, image[:, r:r + 24, c:c + 24].float() / 255)]
        assert found, "every crop is a 24x24 window of its image"
        places.update(found)
    assert len(places) > 5  # at many places, not one


def test_a_failed_archive_download_leaves_no_empty_folders(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    import urllib.error

    def offline(url, download_root, **kwargs):
        Path(download_root).mkdir(parents=True)  # as torchvision does before fetching
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    root = tmp_path / "data"
    with pytest.raises(UserError, match="affnist could not be downloaded.*test.mat.*not known"):
        load_split("affnist", str(root), False, download=True)
    assert not root.exists() and tmp_path.exists()


def test_gzipped_mnist_files_alone_are_read_without_a_download(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    import gzip

    from capsnet.data import splits
    plain = write_dataset(tmp_path / "plain")
    zipped = write_dataset(tmp_path / "zipped")
    raw = zipped / "MNIST" / "raw"
    for path in list(raw.iterdir()):
        (raw / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    monkeypatch.setattr(splits, "fetch", lambda *args: pytest.fail("downloaded"))
    for train in (True, False):
        want = load_split("mnist", str(plain), train, download=False)
        got = load_split("mnist", str(zipped), train, download=True)
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is not a readable gzip file"):
        load_split("mnist", str(zipped), False, download=False)
