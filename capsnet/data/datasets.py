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

MNIST_FILES = ("MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
AFFNIST_URL = "https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/test.mat.zip"
NORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"  # each file as FILE.gz there
NORB = "smallnorb-5x{}x9x18x6x2x96x96-{}-{}.mat"

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mnist", idx.read, *MNIST_FILES, DIGITS, "MNIST",
            "handwritten digits, 1x28x28, 60,000 + 10,000", fit="digit"),
    Dataset("mnist40", idx.read, *MNIST_FILES, DIGITS, "MNIST",
            "MNIST digits each at a uniformly random place on a black 1x40x40 canvas (the paper's "
            "expanded MNIST, for affNIST)", canvas=40, batches=CanvasBatches, fit="digit"),
    Dataset("multimnist", idx.read, *MNIST_FILES, DIGITS, "MNIST",
            "two MNIST digits of different classes, each shifted up to 4 px, overlaid on 1x36x36; "
            "made on the fly", canvas=36, objects=2, batches=CanvasBatches,
            fit="digit"),
    Dataset("affnist", affnist.read, "affNIST", (), ("test.mat",), DIGITS, AFFNIST_URL,
            "affNIST's test set: 32 random affine transforms of each of the 10,000 MNIST test "
            "digits, 320,000 images of 1x40x40 (test only: --eval a mnist40 checkpoint)", tests=("mnist40",),
            shape=(1, 40, 40), fit="digit"),
    Dataset("mnist-affine-standin", idx.read, "MNIST/raw", (), MNIST_FILES[2], DIGITS, "MNIST",
            "NOT affNIST: MNIST test digits under seeded random affine transforms in affNIST's "
            "ranges, 1x40x40, for use offline (test only)", transform=affine.make,
            tests=("mnist40",), fit="digit"),
    Dataset("fashion-mnist", idx.read, "FashionMNIST/raw",
            ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
            ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Boot"), "FashionMNIST", "Zalando's clothing images, 1x28x28, 60,000 + 10,000",
            fit="fashion"),
    Dataset("cifar10", cifar.read, "cifar-10-batches-py",
            tuple(f"data_batch_{k}" for k in range(1, 6)) + ("batches.meta",),
            ("test_batch", "batches.meta"), (), "CIFAR10",
            "photos of 10 classes, 3x32x32, 50,000 + 10,000", shape=(3, 32, 32)),
    Dataset("svhn", svhn.read, "SVHN", ("train_32x32.mat",), ("test_32x32.mat",), DIGITS, "SVHN",
            "house-number digits from Street View, 3x32x32, 73,257 + 26,032", shape=(3, 32, 32)),
    Dataset("smallnorb", smallnorb.read, "smallNORB",
            tuple(NORB.format("46789", "training", part) for part in ("dat", "cat", "info")),
            tuple(NORB.format("01235", "testing", part) for part in ("dat", "cat", "info")),
            ("animal", "human", "airplane", "truck", "car"), NORB_URL,
            "stereo pairs of toys, 2x96x96 resized to 48x48, 5 classes, 24,300 + 24,300 "
            "(--preset smallnorb: 32x32 crops, brightness, contrast, standardised)",
            shape=(2, 48, 48), batches=smallnorb.NorbBatches),
    Dataset("folder", folder.read, "", ("train",), ("test",), (), "",
            "your own images: DIR/train/<class>/* and DIR/test/<class>/*, resized to "
            "--image-size", shape=()),
)}
