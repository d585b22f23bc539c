"""The datasets: one entry each in DATASETS, and a small module that reads its files.

Adding a dataset is an entry here plus a module with
`read(folder: Path, train: bool, entry: Dataset, image_size: int) -> (images, labels, classes)`:
images (N, C, H, W) uint8, labels (N,) int64, classes a tuple of names. This module imports no
torch, so the settings can list the names cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass

DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Dataset:
    name: str
    reader: str  # the module of capsnet.datasets that reads the files
    folder: str  # under the data root ("" : the root itself)
    train_files: tuple[str, ...]  # what must be there, for the messages and the download check
    test_files: tuple[str, ...]
    classes: tuple[str, ...] = ()  # () : named by the files (the folder dataset)
    download: str = ""  # the torchvision dataset class that downloads the files, if any
    about: str = ""  # one line for the README and --help

    def files(self, train: bool) -> tuple[str, ...]:
        return self.train_files if train else self.test_files


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mnist", "idx", "MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), DIGITS, "MNIST",
            "handwritten digits, 1x28x28, 60,000 + 10,000"),
    Dataset("fashion-mnist", "idx", "FashionMNIST/raw",
            ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
            ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Boot"), "FashionMNIST", "Zalando's clothing images, 1x28x28, 60,000 + 10,000"),
    Dataset("cifar10", "cifar", "cifar-10-batches-py",
            tuple(f"data_batch_{k}" for k in range(1, 6)) + ("batches.meta",),
            ("test_batch", "batches.meta"), (), "CIFAR10",
            "photos of 10 classes, 3x32x32, 50,000 + 10,000"),
    Dataset("svhn", "svhn", "SVHN", ("train_32x32.mat",), ("test_32x32.mat",), DIGITS, "SVHN",
            "house-number digits from Street View, 3x32x32, 73,257 + 26,032"),
    Dataset("folder", "folder", "", ("train",), ("test",), (), "",
            "your own images: DIR/train/<class>/* and DIR/test/<class>/*, resized to "
            "--image-size"),
)}
