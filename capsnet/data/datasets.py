"""The datasets: one entry each in DATASETS, and a small module that reads its files.

Adding a dataset is an entry here plus a module with
`read(folder: Path, train: bool, entry: Dataset, image_size: int) -> (images, labels, classes)`:
images (N, C, H, W) uint8, labels (N,) int64, classes a tuple of names. This module imports no
torch, so the settings can list the names cheaply.

Datasets made from another's files say how: `canvas` places `objects` digits at random on a
black canvas, afresh in every training pass and from a fixed seed for the test set
(capsnet.data.canvas: mnist40, MultiMNIST); `transform` names a module whose
`make(split) -> Split` turns the files' split into this dataset once (the affine stand-in).
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:  # the records name torch types; reading the table needs no torch
    import torch
    from torch import Tensor

DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Dataset:
    name: str
    reader: str  # the module of capsnet.data that reads the files
    folder: str  # under the data root ("" : the root itself)
    train_files: tuple[str, ...]  # what must be there, for the messages and the download check
    test_files: tuple[str, ...]
    classes: tuple[str, ...] = ()  # () : named by the files (the folder dataset)
    download: str = ""  # the torchvision dataset class that downloads the files, if any
    about: str = ""  # one line for the README and --help
    canvas: int = 0  # > 0: examples made by placing digits on a canvas of this side
    objects: int = 1  # digits (labels) per example
    transform: str = ""  # module of capsnet.data whose make(split) gives this dataset
    tests: tuple[str, ...] = ()  # datasets whose checkpoints --eval may test on this one
    shape: tuple[int, int, int] = (1, 28, 28)  # of the files' images; () : as they come (folder)
    batches: str = ""  # module of capsnet.data whose BATCHES class serves it (default: plain)
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


MNIST_FILES = ("MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
AFFNIST_URL = "https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/test.mat.zip"
NORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"  # each file as FILE.gz there
NORB = "smallnorb-5x{}x9x18x6x2x96x96-{}-{}.mat"

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mnist", "idx", *MNIST_FILES, DIGITS, "MNIST",
            "handwritten digits, 1x28x28, 60,000 + 10,000", fit="digit"),
    Dataset("mnist40", "idx", *MNIST_FILES, DIGITS, "MNIST",
            "MNIST digits each at a uniformly random place on a black 1x40x40 canvas (the paper's "
            "expanded MNIST, for affNIST)", canvas=40, batches="canvas", fit="digit"),
    Dataset("multimnist", "idx", *MNIST_FILES, DIGITS, "MNIST",
            "two MNIST digits of different classes, each shifted up to 4 px, overlaid on 1x36x36; "
            "made on the fly", canvas=36, objects=2, batches="canvas",
            fit="digit"),
    Dataset("affnist", "affnist", "affNIST", (), ("test.mat",), DIGITS, AFFNIST_URL,
            "affNIST's test set: 32 random affine transforms of each of the 10,000 MNIST test "
            "digits, 320,000 images of 1x40x40 (test only: --eval a mnist40 checkpoint)", tests=("mnist40",),
            shape=(1, 40, 40), fit="digit"),
    Dataset("mnist-affine-standin", "idx", "MNIST/raw", (), MNIST_FILES[2], DIGITS, "MNIST",
            "NOT affNIST: MNIST test digits under seeded random affine transforms in affNIST's "
            "ranges, 1x40x40, for use offline (test only)", transform="affine",
            tests=("mnist40",), fit="digit"),
    Dataset("fashion-mnist", "idx", "FashionMNIST/raw",
            ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
            ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Boot"), "FashionMNIST", "Zalando's clothing images, 1x28x28, 60,000 + 10,000",
            fit="fashion"),
    Dataset("cifar10", "cifar", "cifar-10-batches-py",
            tuple(f"data_batch_{k}" for k in range(1, 6)) + ("batches.meta",),
            ("test_batch", "batches.meta"), (), "CIFAR10",
            "photos of 10 classes, 3x32x32, 50,000 + 10,000", shape=(3, 32, 32)),
    Dataset("svhn", "svhn", "SVHN", ("train_32x32.mat",), ("test_32x32.mat",), DIGITS, "SVHN",
            "house-number digits from Street View, 3x32x32, 73,257 + 26,032", shape=(3, 32, 32)),
    Dataset("smallnorb", "smallnorb", "smallNORB",
            tuple(NORB.format("46789", "training", part) for part in ("dat", "cat", "info")),
            tuple(NORB.format("01235", "testing", part) for part in ("dat", "cat", "info")),
            ("animal", "human", "airplane", "truck", "car"), NORB_URL,
            "stereo pairs of toys, 2x96x96 resized to 48x48, 5 classes, 24,300 + 24,300 "
            "(--preset smallnorb: 32x32 crops, brightness, contrast, standardised)",
            shape=(2, 48, 48), batches="smallnorb"),
    Dataset("folder", "folder", "", ("train",), ("test",), (), "",
            "your own images: DIR/train/<class>/* and DIR/test/<class>/*, resized to "
            "--image-size", shape=()),
)}
