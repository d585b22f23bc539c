"""MNIST and Fashion-MNIST: IDX files (big-endian header, then uint8 pixels or labels), read as
they are or gzipped (.gz, as they are served)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .records import Dataset, file_bytes


def read_idx(path: Path, dims: int) -> np.ndarray:
    path, data = file_bytes(path)
    if len(data) < 4 + 4 * dims or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != dims:
        raise UserError(f"{path} is not an IDX file of {dims}-dimensional uint8 data")
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} holds {body.size} bytes of data, its header says {shape}")
    return body.reshape(shape)


def read(folder: Path, train: bool, entry: Dataset, image_size: int
         ) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    images_file, labels_file = entry.files(train)
    images, labels = read_idx(folder / images_file, 3), read_idx(folder / labels_file, 1)
    if len(images) != len(labels):
        raise UserError(f"{folder} holds {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() >= len(entry.classes):
        raise UserError(f"{folder / labels_file} has label {labels.max()}; "
                        f"{entry.name} has {len(entry.classes)} classes")
    return (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
            entry.classes)
