"""The user's own images: ROOT/train/<class>/* and ROOT/test/<class>/*, as ImageFolder reads them,
decoded once, resized to image_size x image_size, grey or colour as the files are."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .records import Dataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def on_white(image: Any) -> tuple[Any, bool]:
    """A PIL image with transparency composited onto white (so dark ink on a transparent ground
    stays dark on light), and whether it had any; images without it come back as they are."""
    from PIL import Image
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image, False
    grey = image.mode in ("LA", "La") or (image.mode in ("L", "1") and "transparency" in image.info)
    rgba = image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return flat.convert("L" if grey else "RGB"), True


def class_folders(split: Path) -> list[Path]:
    return sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def read(folder: Path, train: bool, entry: Dataset, image_size: int
         ) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError
    classes = tuple(p.name for p in class_folders(folder / "train"))
    if not classes:
        raise UserError(f"{folder / 'train'} holds no class folders (expected train/<class>/*)")
    split = folder / ("train" if train else "test")
    present = {p.name for p in class_folders(split)}
    if not train and present != set(classes):
        missing, extra = sorted(set(classes) - present), sorted(present - set(classes))
        raise UserError(f"{split} must hold the classes of {folder / 'train'}"
                        + (f"; missing: {', '.join(missing)}" if missing else "")
                        + (f"; not in train: {', '.join(extra)}" if extra else ""))
    images, labels, modes = [], [], {}
    for label, name in enumerate(classes):
        files = sorted(p for p in (split / name).iterdir() if p.suffix.lower() in EXTENSIONS)
        if not files:
            raise UserError(f"{split / name} holds no images ({', '.join(EXTENSIONS)})")
        for path in files:
            try:
                with Image.open(path) as image:
                    image.load()
                    image, _ = on_white(image)
                    grey = image.mode in ("1", "L", "I", "I;16", "F")
                    image = image.convert("L" if grey else "RGB")
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise UserError(f"{path} is not a readable image ({type(error).__name__})") \
                    from None
            modes.setdefault(grey, path)
            if len(modes) > 1:
                raise UserError(f"{modes[True]} is grey but {modes[False]} is in colour; use "
                                "images of one kind")
            resized = image.resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(resized, dtype=np.uint8)
            images.append(array[None] if grey else array.transpose(2, 0, 1))
            labels.append(label)
    return (torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), classes)
