"""A picture of one digit made an MNIST digit, as MNIST's own were made (LeCun et al.): the ink
separated from the paper, its bounding box fitted into 20x20 keeping its aspect ratio
(anti-aliased), and centred by its centre of mass in 28x28. `prepare_digit(image)` does it for a
PIL image or an array, whatever its size (28x28 included); capsnet.predict uses it for the digit
models (MNIST and its kin).

Ink from paper, in four steps:
1. polarity: the ink is dark when the border is brighter than the picture's middle range (a
   page), light otherwise (MNIST's white on black); a transparent picture's ink is its alpha;
2. the paper's level and its slow shading: a quadratic surface fitted to the pixels Otsu's
   threshold calls paper, subtracted from the whole picture;
3. the strokes: Otsu's threshold of what is left, and its connected parts larger than specks;
4. no digit when the strokes do not stand out of the paper's own variation (CONTRAST times
   the paper's spread above it), whatever share of the picture they cover: a blank page, a
   wall, noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SIDE, BOX = 28, 20  # MNIST: digits fitted into BOX x BOX, centred by mass in SIDE x SIDE
CONTRAST = 6.0  # the strokes' median above the paper, in the paper's spreads, to be a digit
SPECK = 0.02  # a connected part below this share of the largest one is noise


@dataclass
class Digit:
    """What prepare_digit made of a picture."""
    tensor: torch.Tensor | None  # (1, 28, 28) float in [0, 1], white ink on black; None: no digit
    done: list[str] = field(default_factory=list)  # what was done, in words
    no_digit: str = ""  # why no digit was found ("" when one was)


def prepare_digit(image: Any, invert: str = "auto", side: int = SIDE) -> Digit:
    """`image`: a PIL image, or an array (H, W) or (H, W, C) of 0-255 or 0-1 values; `invert`
    "auto", or "yes"/"no" to say the ink is dark/light whatever the border says; `side` the
    digit's square (MNIST's 28; the box scales with it)."""
    grey, alpha, done = as_grey(image)
    if alpha is not None:
        ink = alpha
        done.append("its ink taken from its transparency")
    else:
        dark = invert == "yes" or (invert == "auto" and dark_ink(grey))
        ink = 1.0 - grey if dark else grey
        if dark:
            done.append("inverted (dark ink on a bright ground)" if invert == "auto"
                        else "inverted")
    spread = float(ink.max() - ink.min())
    if spread < 1e-3:
        return Digit(None, done, "the picture is one flat colour")
    ink, flattened = without_paper(ink)
    if flattened:
        done.append("the paper's shading removed")
    strokes, contrast = find_strokes(ink)
    if strokes is None or contrast < CONTRAST:
        return Digit(None, done, f"no ink stands out of the paper (contrast {contrast:.1f}, "
                                 f"a digit's is above {CONTRAST:g})")
    digit, how = fitted(ink, strokes, side)
    return Digit(torch.from_numpy(digit)[None], done + [how])


def as_grey(image: Any) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(H, W) grey values in [0, 1]; the alpha channel (as ink) when the picture is partly
    transparent; what was read."""
    from PIL import Image
    if isinstance(image, Image.Image):
        done = [f"read {image.width}x{image.height} {image.mode}"]
        alpha = None
        if "A" in image.getbands() or "transparency" in image.info:
            alpha = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float32) / 255
            if alpha.min() > 0.99:  # opaque everywhere: an ordinary picture
                alpha = None
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255
        colour = np.asarray(image.convert("RGB"), dtype=np.int16)
        if alpha is None and np.ptp(colour, axis=2).max() > 8:  # not grey already
            done.append("made grey")
        return grey, alpha, done
    array = np.asarray(image, dtype=np.float32)
    if array.max() > 1.0:
        array = array / 255
    if array.ndim == 3:
        array = array[..., :3].mean(axis=2) if array.shape[2] >= 3 else array[..., 0]
    return array, None, [f"read a {array.shape[1]}x{array.shape[0]} array"]


def dark_ink(grey: np.ndarray) -> bool:
    """Whether the ink is darker than the paper: the border (mostly paper) lies above the
    middle between the picture's darkest and brightest values (a small digit is too few pixels
    for any percentile)."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return float(np.median(border)) > (float(grey.min()) + float(grey.max())) / 2


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins)."""
    counts, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * centres)
    total, grand = weight[-1], mean[-1]
    between = np.zeros_like(centres)
    inside = (weight > 0) & (weight < total)
    w0, m0 = weight[inside], mean[inside] / weight[inside]
    m1 = (grand - mean[inside]) / (total - weight[inside])
    between[inside] = w0 * (total - w0) * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def without_paper(ink: np.ndarray) -> tuple[np.ndarray, bool]:
    """The ink (bright) less the paper's level and slow shading: a quadratic surface fitted to
    the pixels below half Otsu's threshold (clear of the strokes' faint edges); clipped to
    [0, 1] and rescaled so the strokes reach 1. Whether a shading was removed (a surface that
    varies by more than a few percent)."""
    h, w = ink.shape
    threshold = otsu(np.clip(ink, 0, 1))
    paper = ink < threshold / 2
    if paper.sum() < 6:  # hardly any clear paper (a crop of a stroke): the threshold's side
        paper = ink < threshold
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = y / max(h - 1, 1) - 0.5, x / max(w - 1, 1) - 0.5
    terms = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)  # (H, W, 6)
    step = max(1, int(np.sqrt(paper.sum() / 20000)))  # at most about 20,000 pixels fitted
    rows = terms[paper][::step]
    coefficients = np.linalg.lstsq(rows, ink[paper][::step], rcond=None)[0]
    surface = terms @ coefficients
    flat = np.clip(ink - surface, 0.0, None)
    strokes = ink > threshold
    top = float(np.percentile(flat[strokes], 95)) if strokes.any() else float(flat.max())
    shading = float(surface.max() - surface.min()) > 0.03
    return np.clip(flat / max(top, 1e-6), 0.0, 1.0), shading


def find_strokes(ink: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The strokes (a bool mask of the connected parts above Otsu's threshold, specks dropped)
    and their contrast: their median less the paper's, over the paper's spread (its values'
    standard deviation, at least 1/255)."""
    from scipy import ndimage
    threshold = otsu(ink)
    mask = ink > threshold
    if not mask.any() or mask.all():
        return None, 0.0
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    kept = np.isin(labels, 1 + np.flatnonzero(sizes >= SPECK * sizes.max()))
    paper = ink[~mask]
    spread = max(float(paper.std()), 1 / 255)
    contrast = (float(np.median(ink[kept])) - float(np.median(paper))) / spread
    return kept, contrast


def fitted(ink: np.ndarray, strokes: np.ndarray, side: int = SIDE) -> tuple[np.ndarray, str]:
    """The strokes' bounding box (widened to their faint edges), its paper set to 0, fitted into
    BOX x BOX keeping the aspect ratio and centred by its centre of mass in SIDE x SIDE (both
    scaled by side / SIDE)."""
    fit = round(side * BOX / SIDE)
    from scipy import ndimage
    edges = ndimage.binary_dilation(strokes, iterations=2) & (ink > 0.05)
    rows, cols = np.flatnonzero(edges.any(axis=1)), np.flatnonzero(edges.any(axis=0))
    box = np.where(edges, ink, 0.0)[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = box.shape
    scale = fit / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    if shape != (h, w):
        import torch.nn.functional as F
        box = F.interpolate(torch.from_numpy(np.ascontiguousarray(box, dtype=np.float32))[None, None],
                            size=shape, mode="bilinear", antialias=True,
                            align_corners=False)[0, 0].clamp(0, 1).numpy()
    h, w = box.shape
    mass = box.sum()
    row = float((box.sum(axis=1) * np.arange(h)).sum() / mass)
    col = float((box.sum(axis=0) * np.arange(w)).sum() / mass)
    # MNIST's centres of mass lie at pixel index 14 of 28 (13.5 would be the middle)
    top = min(max(round(side / 2 - row), 0), side - h)
    left = min(max(round(side / 2 - col), 0), side - w)
    out = np.zeros((side, side), dtype=np.float32)
    out[top:top + h, left:left + w] = box
    return out, (f"the digit fitted into a {fit}x{fit} box keeping its aspect ratio ({w}x{h}) "
                 f"and centred by its centre of mass in {side}x{side}, as MNIST's were")
