"""The datasets: one entry each in DATASETS (a capsnet.data.records.Dataset), and a small module
that reads its files.

Adding a dataset is an entry here plus a module with
`read(folder: Path, train: bool, entry: Dataset, image_size: int) -> (images, labels, classes)`:
images (N, C, H, W) uint8, labels (N,) int64, classes a tuple of names; the entry names that
function itself. Heavy optional imports (scipy's) stay inside the readers' functions.

Datasets made from another's files say how: `canvas` places `objects` digits at random on a
black canvas, afresh in every training pass and from a fixed seed for the test set, served by
`batches` (capsnet.data.canvas: mnist40, MultiMNIST); `transform` turns the files' split into
this dataset once (capsnet.data.affine: the affine stand-in).
"""
from __future__ import annotations

from . import affine, affnist, cifar, folder, idx, smallnorb, svhn
from .canvas import CanvasBatches
from .records import Dataset

DIGITS = tuple(str(d) for d in range(10))

MNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# the fields every dataset made of the MNIST files shares
MNIST_FIELDS = {"read": idx.read, "folder": "MNIST/raw", "train_files": MNIST_TRAIN,
                "test_files": MNIST_TEST, "classes": DIGITS, "download": "MNIST", "fit": "digit"}
AFFNIST_URL = "https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/test.mat.zip"
NORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"  # each file as FILE.gz there
NORB = "smallnorb-5x{}x9x18x6x2x96x96-{}-{}.mat"

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset(name="mnist", **MNIST_FIELDS, about="handwritten digits, 1x28x28, 60,000 + 10,000"),
    Dataset(name="mnist40", **MNIST_FIELDS, canvas=40, batches=CanvasBatches,
            about="MNIST digits each at a uniformly random place on a black 1x40x40 canvas (the "
            "paper's expanded MNIST, for affNIST)"),
    Dataset(name="multimnist", **MNIST_FIELDS, canvas=36, objects=2, batches=CanvasBatches,
            about="two MNIST digits of different classes, each shifted up to 4 px, overlaid on "
            "1x36x36; made on the fly"),
    Dataset(name="affnist", read=affnist.read, folder="affNIST", train_files=(),
            test_files=("test.mat",), classes=DIGITS, download=AFFNIST_URL, tests=("mnist40",),
            shape=(1, 40, 40), fit="digit",
            about="affNIST's test set: 32 random affine transforms of each of the 10,000 MNIST "
            "test digits, 320,000 images of 1x40x40 (test only: --eval a mnist40 checkpoint)"),
    Dataset(name="mnist-affine-standin", **{**MNIST_FIELDS, "train_files": ()},
            transform=affine.make, tests=("mnist40",),
            about="NOT affNIST: MNIST test digits under seeded random affine transforms in "
            "affNIST's ranges, 1x40x40, for use offline (test only)"),
    Dataset(name="fashion-mnist", read=idx.read, folder="FashionMNIST/raw",
            train_files=MNIST_TRAIN, test_files=MNIST_TEST,
            classes=("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Boot"), download="FashionMNIST", fit="fashion",
            about="Zalando's clothing images, 1x28x28, 60,000 + 10,000"),
    Dataset(name="cifar10", read=cifar.read, folder="cifar-10-batches-py",
            train_files=tuple(f"data_batch_{k}" for k in range(1, 6)) + ("batches.meta",),
            test_files=("test_batch", "batches.meta"), download="CIFAR10", shape=(3, 32, 32),
            about="photos of 10 classes, 3x32x32, 50,000 + 10,000"),
    Dataset(name="svhn", read=svhn.read, folder="SVHN", train_files=("train_32x32.mat",),
            test_files=("test_32x32.mat",), classes=DIGITS, download="SVHN", shape=(3, 32, 32),
            about="house-number digits from Street View, 3x32x32, 73,257 + 26,032"),
    Dataset(name="smallnorb", read=smallnorb.read, folder="smallNORB",
            train_files=tuple(NORB.format("46789", "training", part)
                              for part in ("dat", "cat", "info")),
            test_files=tuple(NORB.format("01235", "testing", part)
                             for part in ("dat", "cat", "info")),
            classes=("animal", "human", "airplane", "truck", "car"), download=NORB_URL,
            shape=(2, 48, 48), batches=smallnorb.NorbBatches,
            about="stereo pairs of toys, 2x96x96 resized to 48x48, 5 classes, 24,300 + 24,300 "
            "(--preset smallnorb: 32x32 crops, brightness, contrast, standardised)"),
    Dataset(name="folder", read=folder.read, folder="", train_files=("train",),
            test_files=("test",), shape=(),
            about="your own images: DIR/train/<class>/* and DIR/test/<class>/*, resized to "
            "--image-size"),
)}
