"""What a dataset is (Dataset: one entry of capsnet.data.datasets' table) and one split of it
(Split), and how its files are read as they are or gzipped. The readers, the batches and the
table all build on these."""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    name: str
    # reads the files: (folder, train, this entry, image_size) -> (images, labels, classes)
    read: Callable[[Path, bool, Dataset, int], tuple[Tensor, Tensor, tuple[str, ...]]]
    folder: str  # under the data root ("" : the root itself)
    train_files: tuple[str, ...]  # what must be there, for the messages and the download check
    test_files: tuple[str, ...]
    classes: tuple[str, ...] = ()  # () : named by the files (the folder dataset)
    download: str = ""  # the torchvision dataset class that downloads the files, if any
    about: str = ""  # one line for the README and --help
    canvas: int = 0  # > 0: examples made by placing digits on a canvas of this side
    objects: int = 1  # digits (labels) per example
    transform: Callable[[Split], Split] | None = None  # makes this dataset of the files' split
    tests: tuple[str, ...] = ()  # datasets whose checkpoints --eval may test on this one
    shape: tuple[int, int, int] = (1, 28, 28)  # of the files' images; () : as they come (folder)
    batches: type | None = None  # the class of capsnet.data.batches that serves it (None: Batches)
    fit: str = ""  # how capsnet.predict makes a user's image this dataset's form: "digit"
    # (capsnet.digits, any size: as MNIST's digits were made), "fashion" (capsnet.predict.FITS,
    # another size: as Fashion-MNIST's were), "": resized

    def files(self, train: bool) -> tuple[str, ...]:
        return self.train_files if train else self.test_files


@dataclass(frozen=True)
class Split:
    """One split of a dataset."""
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device), self.classes)


def file_bytes(path: Path) -> tuple[Path, bytes]:
    """The contents of a dataset file as it is or, when only that is there, of its .gz (as
    torchvision and NYU serve them), with the path actually read."""
    if path.exists():
        return path, path.read_bytes()
    actual = path.with_name(path.name + ".gz")
    try:
        return actual, gzip.decompress(actual.read_bytes())
    except (EOFError, gzip.BadGzipFile) as error:
        raise UserError(f"{actual} is not a readable gzip file ({type(error).__name__})") from None
