"""A dataset's split held as one uint8 tensor: read through the dataset's reader (downloaded
first when asked), shared between runs, and held out for validation."""
from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .datasets import DATASETS
from .records import Dataset, Split
from ..errors import UserError


_shared: dict[tuple, Split] | None = None  # inside shared_splits(): the splits read so far


@contextlib.contextmanager
def shared_splits() -> Iterator[None]:
    """Inside, each split is read once and handed out again to every run that asks for it (the
    runs of capsnet.experiments share MNIST); nothing writes into a Split's tensors."""
    global _shared
    _shared = {}
    try:
        yield
    finally:
        _shared = None


def load_split(name: str, root: str, train: bool, download: bool, limit: int = 0,
               image_size: int = 28) -> Split:
    """Read a split through its dataset's reader (its entry in capsnet.data.datasets),
    downloading first when asked and the files are missing. `limit` keeps the first N examples
    (0: all); `image_size` is the side the folder dataset resizes to."""
    key = (name, str(Path(root).resolve()), train, limit, image_size)
    if _shared is not None and key in _shared:
        return _shared[key]
    split = read_split(name, root, train, download, limit, image_size)
    if _shared is not None:
        _shared[key] = split
    return split


def read_split(name: str, root: str, train: bool, download: bool, limit: int,
               image_size: int) -> Split:
    entry = DATASETS[name]
    if train and not entry.train_files:
        raise UserError(f"{name} is a test set only: train on {' or '.join(entry.tests)} and test "
                        f"that checkpoint with python train.py --eval CHECKPOINT --dataset {name}")
    folder = Path(root) / entry.folder
    files = entry.files(train)
    expected = f"expected {', '.join(files)} in {folder.resolve()}"
    if any(not present(folder / f) for f in files):
        if not (download and entry.download):
            how = "pass --download or --data-dir" if entry.download else "pass --data-dir"
            raise UserError(f"{name} files are missing ({expected}); {how}")
        fetch(entry, root, folder, train, expected)
    try:
        images, labels, classes = entry.read(folder, train, entry, image_size)
    except UserError as error:
        raise UserError(f"{name} could not be read: {error}") from None
    except OSError as error:
        raise UserError(f"{name} could not be read ({expected}; "
                        f"{error.strerror or type(error).__name__})") from None
    if limit:
        images, labels = images[:limit], labels[:limit]
    split = Split(images.contiguous(), labels, classes)
    if entry.transform is not None:
        split = entry.transform(split)
    return split


def present(path: Path) -> bool:
    """A dataset file is there as it is, or gzipped."""
    return path.exists() or path.with_name(path.name + ".gz").exists()


def fetch(entry: Dataset, root: str, folder: Path, train: bool, expected: str) -> None:
    """Download a split's files with torchvision (which checks them against published checksums
    where it knows them), or, for a URL, fetch and unpack that archive into the folder. A failed
    download leaves no empty folders behind."""
    import torchvision  # here: it takes a second to import, and most runs download nothing
    missing = [f for f in (folder, *folder.parents) if not f.exists()]  # innermost first
    try:
        if entry.download.endswith("/"):  # a folder of gzipped files, each kept as it comes
            for name in entry.files(train):
                if not present(folder / name):
                    torchvision.datasets.utils.download_url(entry.download + name + ".gz",
                                                            str(folder))
            return
        if entry.download.startswith("https://"):
            torchvision.datasets.utils.download_and_extract_archive(entry.download, str(folder),
                                                                    remove_finished=True)
            return
        source = getattr(torchvision.datasets, entry.download)
        if hasattr(source, "mirrors"):  # MNIST and its kin: this split's files alone
            from_mirrors(source, folder, entry.files(train))
        elif entry.download == "SVHN":
            source(str(folder), split="train" if train else "test", download=True)
        else:
            source(root, train=train, download=True)
    except (RuntimeError, OSError, AssertionError, ValueError, zipfile.BadZipFile) as error:
        detail = " ".join(str(error).split())[:400] or type(error).__name__
        for made in missing:
            try:
                made.rmdir()  # only if empty
            except OSError:
                break
        raise UserError(f"{entry.name} could not be downloaded ({expected}; {detail})") from None


def from_mirrors(source: Any, folder: Path, needed: tuple[str, ...]) -> None:
    """Each missing file of `needed` (names as kept, without .gz) from the first of a torchvision
    dataset class's mirrors that serves it, checked against the class's md5 (the class itself
    would download every split)."""
    import torchvision
    folder.mkdir(parents=True, exist_ok=True)
    for archive, md5 in source.resources:
        name = archive.removesuffix(".gz")
        if name not in needed or present(folder / name):
            continue
        errors = []
        for mirror in source.mirrors:
            try:
                torchvision.datasets.utils.download_and_extract_archive(
                    mirror + archive, download_root=str(folder), filename=archive, md5=md5)
                break
            except (RuntimeError, OSError) as error:  # URLError is an OSError
                errors.append(f"{mirror}{archive}: {error}")
        else:
            raise RuntimeError("; ".join(errors))


def hold_out(split: Split | None, count: int, limit: int) -> tuple[Split | None, Split | None]:
    """The first `count` training examples as a validation split, never trained on (as the
    authors' code holds out the first 10,000 of MNIST's 60,000), and the rest, of which the
    first `limit` (0: all) are trained on."""
    if split is None or not count:
        return None, split
    if count >= len(split):
        raise UserError(f"--validation-samples {count} is not allowed: the training split has "
                        f"{len(split)} examples, and some must be left to train on")
    rest = slice(count, count + limit if limit else None)
    return (Split(split.images[:count], split.labels[:count], split.classes),
            Split(split.images[rest], split.labels[rest], split.classes))


def random_split(name: str, count: int, seed: int, image_size: int = 28) -> Split:
    """Random images and labels shaped like the dataset's files and classes (the folder dataset:
    3 channels of image_size, ten classes), on the CPU: what the benchmark trains on."""
    entry = DATASETS[name]
    if not entry.train_files:
        raise UserError(f"--dataset {name} is a test set only: nothing to train on")
    g = torch.Generator().manual_seed(seed)
    shape = entry.shape or (3, image_size, image_size)
    classes = entry.classes or DATASETS["mnist"].classes
    images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, len(classes), (count,), generator=g)
    return Split(images, labels, classes)
