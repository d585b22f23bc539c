"""SVHN (cropped digits): MATLAB files with X (32, 32, 3, N) uint8 and y (N, 1), 10 meaning 0."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from . import matfile
from .records import Dataset


def read(folder: Path, train: bool, entry: Dataset, image_size: int
         ) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    path = folder / entry.files(train)[0]
    mat = matfile.load(path)
    images, labels = mat.get("X"), mat.get("y")
    if (images is None or labels is None or images.ndim != 4 or images.shape[:3] != (32, 32, 3)
            or labels.size != images.shape[3]):
        raise UserError(f"{path} does not hold X (32, 32, 3, N) and y (N, 1)")
    labels = labels.reshape(-1).astype(np.int64) % 10  # the files write digit 0 as 10
    return (torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1)).astype(np.uint8)),
            torch.from_numpy(labels), entry.classes)
