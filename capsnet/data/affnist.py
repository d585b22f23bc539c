"""affNIST (https://www.cs.toronto.edu/~tijmen/affNIST/): MATLAB files holding one struct
`affNISTdata` whose field `image` is (1600, N) uint8, one 40x40 image per column in row-major
order, and `label_int` (1, N) the digit. Only the test set is read: test.mat of the transformed
version, 32 randomly transformed copies of each of the 10,000 MNIST test digits, N = 320,000
(512 MB of pixels). The reader takes as many images as the file holds, without copying them:
scipy reads the column-major matrix, whose transpose is already one image per row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from . import matfile
from .records import Dataset

SIDE = 40


def read(folder: Path, train: bool, entry: Dataset, image_size: int
         ) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    path = folder / entry.files(train)[0]
    mat = matfile.load(path)
    data = mat.get("affNISTdata")
    names = (data.dtype.names or ()) if isinstance(data, np.ndarray) else ()
    if data is None or "image" not in names or "label_int" not in names or data.size != 1:
        raise UserError(f"{path} does not hold the struct affNISTdata with image and label_int")
    images, labels = data["image"].item(), data["label_int"].item().reshape(-1)
    if images.ndim != 2 or images.shape != (SIDE * SIDE, labels.size):
        raise UserError(f"{path}: affNISTdata.image is {images.shape}, expected (1600, "
                        f"{labels.size}) for its {labels.size} labels")
    if labels.size and labels.max() >= len(entry.classes):
        raise UserError(f"{path} has label {labels.max()}; {entry.name} has "
                        f"{len(entry.classes)} classes")
    pixels = np.ascontiguousarray(images.T).reshape(-1, 1, SIDE, SIDE).astype(np.uint8,
                                                                           copy=False)
    return torch.from_numpy(pixels), torch.from_numpy(labels.astype(np.int64)), entry.classes
