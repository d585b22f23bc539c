"""smallNORB (https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/): 2x96x96 stereo pairs of toys of
5 classes, 24,300 for training and 24,300 for testing, in NORB's "binary matrix" files, read as
they are or gzipped (.mat.gz, as they are served).

A binary matrix: a little-endian int32 magic number (0x1E3D4C55 for bytes, 0x1E3D4C54 for int32),
the number of dimensions, then max(3, ndim) int32 sizes of which the first ndim are the shape, then
the data. The -dat file is (N, 2, 96, 96) bytes, the -cat file (N,) int32 classes.

As the authors' code prepares it: each pair is resized to 48x48 when read; in training, random
32x32 crops (--crop 32), a random brightness (up to 63/255 either way) and contrast (0.2 to 1.8);
at test the centre crop; then every image is standardised on its own (zero mean, unit standard
deviation). The decoder ends in a sigmoid and cannot rebuild a standardised image, so it is asked
for the [0, 1] crop before the brightness, contrast and standardisation (Sample.targets).
"""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .batches import Batches
from ..errors import UserError
from .records import Dataset, file_bytes

MAGIC = {0x1E3D4C55: np.uint8, 0x1E3D4C54: np.int32}
SIDE = 48  # the pairs are resized to 48x48 when read
BRIGHTNESS = 63 / 255
CONTRAST = (0.2, 1.8)
CHUNK = 1000


def read_matrix(path: Path) -> np.ndarray:
    """A NORB binary matrix file, or its .gz."""
    actual, data = file_bytes(path)
    if len(data) < 8:
        raise UserError(f"{actual} is not a NORB binary matrix (too short)")
    magic, ndim = struct.unpack("<iI", data[:8])
    if magic not in MAGIC or not 1 <= ndim <= 8:
        raise UserError(f"{actual} is not a NORB binary matrix (magic {magic:#x}, "
                        f"{ndim} dimensions)")
    count = max(3, ndim)
    header = 8 + 4 * count
    shape = struct.unpack(f"<{count}i", data[8:header])[:ndim] if len(data) >= header else ()
    dtype = np.dtype(MAGIC[magic]).newbyteorder("<")
    if len(shape) != ndim or min(shape) < 0 or \
            len(data) - header != math.prod(shape) * dtype.itemsize:
        raise UserError(f"{actual}: its header says {tuple(shape)} of {dtype.name}, but it holds "
                        f"{len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def resize(pairs: np.ndarray) -> Tensor:
    """(N, 2, 96, 96) uint8 -> (N, 2, 48, 48) uint8, bilinear, in chunks."""
    out = torch.empty(len(pairs), pairs.shape[1], SIDE, SIDE, dtype=torch.uint8)
    for start in range(0, len(pairs), CHUNK):
        chunk = torch.from_numpy(pairs[start:start + CHUNK].astype(np.float32))
        small = F.interpolate(chunk, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
        out[start:start + CHUNK] = small.round().clamp(0, 255).to(torch.uint8)
    return out


def read(folder: Path, train: bool, entry: Dataset, image_size: int
         ) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    dat, cat, _ = (folder / name for name in entry.files(train))
    pairs, labels = read_matrix(dat), read_matrix(cat)
    if pairs.ndim != 4 or pairs.shape[1] != 2 or pairs.dtype != np.uint8:
        raise UserError(f"{dat} holds {pairs.shape} {pairs.dtype}, not (N, 2, H, W) bytes")
    if labels.ndim != 1 or len(labels) != len(pairs):
        raise UserError(f"{cat} holds {labels.shape} labels for {len(pairs)} pairs")
    if labels.size and (labels.min() < 0 or labels.max() >= len(entry.classes)):
        raise UserError(f"{cat} has label {labels.max()}; smallNORB has {len(entry.classes)} "
                        "classes")
    return resize(pairs), torch.from_numpy(labels.astype(np.int64)), entry.classes


def standardise(images: Tensor) -> Tensor:
    """Each image (B, C, H, W) to zero mean and unit standard deviation, as
    tf.image.per_image_standardization does (the deviation at least 1/sqrt(pixels))."""
    flat = images.flatten(1)
    floor = 1.0 / math.sqrt(flat.shape[1])
    std = flat.std(dim=1, unbiased=False).clamp_min(floor)
    return (images - flat.mean(dim=1)[:, None, None, None]) / std[:, None, None, None]


class NorbBatches(Batches):
    """Batches of 32x32 crops: in a shuffled (training) pass with a random brightness and
    contrast per image, then standardised; targets are the [0, 1] crops."""

    def draw(self, count: int) -> tuple[Tensor, list[Tensor]]:
        order, drawn = super().draw(count)
        if self.shuffle:
            delta = (2 * torch.rand(count, generator=self.generator) - 1) * BRIGHTNESS
            low, high = CONTRAST
            factor = low + (high - low) * torch.rand(count, generator=self.generator)
        else:
            delta, factor = torch.zeros(count), torch.ones(count)
        return order, [*drawn, delta, factor]

    def serve(self, index: Tensor, offsets: Tensor, delta: Tensor, factor: Tensor
              ) -> tuple[Tensor, Tensor, Tensor]:
        crops, labels, _ = super().serve(index, offsets)  # (B, 2, 32, 32) in [0, 1]
        mean = crops.mean(dim=(2, 3), keepdim=True)  # per channel, as tf's random_contrast
        delta, factor = delta[:, None, None, None], factor[:, None, None, None]
        adjusted = (crops - mean) * factor + mean + delta  # brightness, then contrast
        return standardise(adjusted), labels, crops
