"""CIFAR-10: the python pickles of cifar-10-batches-py (dicts of uint8 rows and label lists)."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .records import Dataset


def text(value: Any) -> Any:
    """A key or name as str, whether it was pickled as Python 2's str or Python 3's bytes."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def unpickle(path: Path) -> dict[str, Any]:
    """A batch's dict with str keys: the original files are Python 2 pickles (read with latin1,
    as torchvision does, so their str keys and numpy arrays come back as str and arrays);
    batches pickled again by Python 3 may hold str or bytes keys."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError,
            ImportError) as error:
        raise UserError(f"{path} is not a CIFAR batch ({type(error).__name__})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a CIFAR batch (a dict)")
    return {text(key): value for key, value in batch.items()}


def read(folder: Path, train: bool, entry: Dataset, image_size: int
         ) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    meta = unpickle(folder / "batches.meta")
    classes = tuple(text(name) for name in meta.get("label_names", []))
    images, labels = [], []
    for name in entry.files(train):
        if name == "batches.meta":
            continue
        batch = unpickle(folder / name)
        data, batch_labels = batch.get("data"), batch.get("labels")
        if (not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32
                or batch_labels is None or len(batch_labels) != len(data)):
            raise UserError(f"{folder / name} does not hold 3x32x32 images with their labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(batch_labels)
    labels_array = np.asarray(labels, dtype=np.int64)
    if len(classes) < 2 or (labels_array.size and labels_array.max() >= len(classes)):
        raise UserError(f"{folder / 'batches.meta'} does not name the classes of the labels")
    return (torch.from_numpy(np.concatenate(images).astype(np.uint8)),
            torch.from_numpy(labels_array), classes)
