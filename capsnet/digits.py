"""A picture of one digit made an MNIST digit, as MNIST's own were made (LeCun et al.): the ink
separated from the paper, its bounding box fitted into 20x20 keeping its aspect ratio
(anti-aliased), and centred by its centre of mass in 28x28. `prepare_digit(image)` does it for a
PIL image or an array, whatever its size (28x28 included); capsnet.predict uses it for the digit
models (MNIST and its kin).

Ink from paper, in six steps, at WORK pixels at most (a phone photo is reduced first):
1. polarity: the ink is dark when the border is brighter than the picture's middle range (a
   page), light otherwise (MNIST's white on black); a transparent picture's ink is its alpha;
2. the paper's light, each part against its own neighbourhood: the paper's level under a window
   larger than any stroke (a grey opening of the ink), divided out, so that a shadow, soft or with
   a hard edge, vignetting or an uneven level leave the ink as dark as in the light;
3. the rules: thin or faint straight lines across most of the picture (a notebook's rules, its
   margin line) are not the digit's ink, and are taken out where no stroke crosses them;
4. the strokes: Otsu's threshold, and the group of connected parts a person would point at: the
   largest part (one clear of the picture's edge before one touching it) and the parts near it;
5. no digit when the strokes do not stand out of the paper's own variation (CONTRAST times
   the paper's spread above it), whatever share of the picture they cover: a blank page, a
   wall, noise; nor when they are specks thinner than any pen's stroke, spread over the page;
6. the pen: strokes much thinner or thicker at 28x28 than MNIST's (a thin ballpoint, a broad
   marker) are drawn again at MNIST's median width.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SIDE, BOX = 28, 20  # MNIST: digits fitted into BOX x BOX, centred by mass in SIDE x SIDE
CONTRAST = 6.0  # the strokes' median above the paper, in the paper's spreads, to be a digit
SPECK = 0.02  # a connected part below this share of the largest one is noise
WORK = 640  # the longest side a picture is prepared at: a stroke 1% of a photo's side is 6 pixels
# MNIST's 60,000 training digits at 28x28 (fitted into 20x20, form().stroke): their median
# stroke width in pixels, and its 10th and 90th percentiles; a digit drawn larger than MNIST's
# outside that range is drawn again at the median
MNIST_STROKE, MNIST_STROKES = 2.70, (2.14, 3.67)
# their extremes: the widest strokes, and the widest digit against its height; ink beyond them
# is a filled shape or a line, not a digit
WIDEST_STROKE, WIDEST_DIGIT = 8.7, 2.5
# thinner strokes at 28x28 are specks of noise spread over the page, such as the broken ends of
# notebook rules taken out (0.09), not a pen's: a thin ballpoint across a phone photo measures
# 0.68, a 0.3-0.5 mm pen's digit 12 cm high on a photo of an A4 page 0.18-0.21 (docs/predict.md)
THINNEST_STROKE = 0.15
WINDOW = 0.25  # the paper's neighbourhood, a share of the picture's longer side
SMALL = 64  # a picture whose longer side is below this is one neighbourhood, at MNIST's scale
RULE = 0.6  # a rule spans at least this share of the picture


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
    ink, flattened = without_paper(ink, paper_window(ink))
    if flattened:
        done.append("the paper's light and shadows divided out")
    ink, rules = without_rules(ink)
    if rules:
        done.append(f"{rules} ruled line{'s' if rules > 1 else ''} taken out")
    strokes, contrast = find_strokes(ink)
    if strokes is None or contrast < CONTRAST:
        return Digit(None, done, f"no ink stands out of the paper (contrast {contrast:.1f}, "
                                 f"a digit's is above {CONTRAST:g})")
    shape = form(strokes)
    small = max(ink.shape) < SMALL  # a picture of MNIST's own size is taken as it is drawn
    if shape.stroke > WIDEST_STROKE and not small:
        return Digit(None, done, f"the ink is a filled shape, not a pen's strokes (strokes "
                                 f"{shape.stroke:.1f} pixels wide at 28x28; MNIST's widest are "
                                 f"{WIDEST_STROKE:g})")
    if shape.stroke < THINNEST_STROKE and not small:
        return Digit(None, done, f"the ink is specks, not a pen's strokes (strokes "
                                 f"{shape.stroke:.2f} pixels wide at 28x28; a pen's are at least "
                                 f"{THINNEST_STROKE:g})")
    if shape.aspect > WIDEST_DIGIT and not small:
        return Digit(None, done, f"the ink is {shape.aspect:.1f} times as wide as it is tall "
                                 f"(MNIST's widest digit: {WIDEST_DIGIT:g} times)")
    if not small:
        ink, strokes, pen = with_mnist_pen(ink, strokes, shape)
        if pen:
            done.append(pen)
    digit, how = fitted(ink, strokes, side)
    return Digit(torch.from_numpy(digit)[None], done + [how])


def as_grey(image: Any) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(H, W) grey values in [0, 1]; the alpha channel (as ink) when the picture is partly
    transparent; what was read."""
    from PIL import Image
    if isinstance(image, Image.Image):
        done = [f"read {image.width}x{image.height} {image.mode}"]
        factor = -(-max(image.size) // WORK)
        if factor > 1:  # a box filter in Pillow: the picture at the resolution the answer needs
            image = image.reduce(factor)
            done.append(f"reduced to {image.width}x{image.height}")
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
    done = [f"read a {array.shape[1]}x{array.shape[0]} array"]
    factor = -(-max(array.shape) // WORK)
    if factor > 1:  # the mean of each factor x factor block
        h, w = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
        array = array[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
        done.append(f"reduced to {array.shape[1]}x{array.shape[0]}")
    return array, None, done


def dark_ink(grey: np.ndarray) -> bool:
    """Whether the ink is darker than the paper: the border (mostly paper) lies above the
    middle between the picture's darkest and brightest values (a small digit is too few pixels
    for any percentile). Where the border is near that middle (a shadow over part of it), the
    ink is the side of the picture's strongest fine details: darker or brighter than their
    surroundings."""
    border = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    low, high = float(grey.min()), float(grey.max())
    middle = (low + high) / 2
    if abs(border - middle) > 0.15 * (high - low) or max(grey.shape) < SMALL:
        return border > middle
    from scipy import ndimage
    detail = grey - ndimage.gaussian_filter(grey, 0.01 * max(grey.shape))
    # the extremes: a shadow's edge gives as much on both sides, over more pixels than a stroke
    return -float(np.percentile(detail, 0.1)) > float(np.percentile(detail, 99.9))


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins; values outside count at 0 or 1)."""
    counts, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=256, range=(0.0, 1.0))
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


def paper_window(ink: np.ndarray) -> int | None:
    """The side of the paper's neighbourhood: WINDOW of the picture's longer side, or four
    widths of the strokes seen under that window when smaller (at least 15 pixels), so that a
    shadow's narrow parts stay paper; None for a picture of MNIST's size (one neighbourhood)."""
    if max(ink.shape) < SMALL:
        return None
    window = round(WINDOW * max(ink.shape))
    strokes, _ = find_strokes(without_paper(ink, window)[0])
    if strokes is None:
        return window
    return int(min(window, max(15, round(4 * stroke_width(strokes)))))


def without_paper(ink: np.ndarray, window: int | None) -> tuple[np.ndarray, bool]:
    """The ink (bright) against its own neighbourhood's paper: the paper's level is the grey
    opening of the lightly smoothed ink under a window x window square (larger than any stroke,
    so the strokes fall out of it, while a shadow's edge stays where it is; with no window, the
    median of what Otsu's threshold calls paper); the ink is (ink - level) / (1 - level), the
    share of the paper's light the ink takes, the same in a shadow as in the light; rescaled so
    the strokes reach 1. Whether the paper's level varied (by more than a few percent)."""
    from scipy import ndimage
    if window is None:
        level = np.full_like(ink, float(np.median(ink[ink <= otsu(ink)])))
    else:
        # the picture extended by its edge's values: paper that darkens towards the edge (a
        # vignette) is then wide enough for the window there too
        padded = np.pad(ndimage.gaussian_filter(ink, 1.0), window, mode="edge")
        level = ndimage.grey_opening(padded, size=(window, window))[window:-window,
                                                                     window:-window]
    flat = (ink - level) / np.maximum(1.0 - level, 0.05)
    strokes = flat > otsu(flat)
    top = float(np.percentile(flat[strokes], 95)) if strokes.any() else float(flat.max())
    varied = float(np.percentile(level, 99) - np.percentile(level, 1)) > 0.03
    # the paper keeps its noise on both sides of its level, for find_strokes' contrast
    return np.minimum(flat / max(top, 1e-6), 1.0), varied


def without_rules(ink: np.ndarray) -> tuple[np.ndarray, int]:
    """The ink without rules: straight lines, level within 4 degrees or upright, across RULE of
    the picture or more, and thinner or fainter than the other strokes by a quarter (a notebook's
    rules, its margin line). Where a stroke crosses a rule, the stroke is kept.
    How many rules were taken out."""
    mask = ink > otsu(ink)
    if max(ink.shape) < SMALL or not mask.any():
        return ink, 0
    from scipy import ndimage
    level, upright = rules_in(mask), rules_in(mask.T).T
    if not (level.any() or upright.any()):
        return ink, 0
    others = without_specks(mask & ~level & ~upright)
    depth = ndimage.distance_transform_edt(others)
    width = 4 * float(depth[others].mean()) - 2 if others.any() else 0.0
    strength = float(np.median(ink[others])) if others.any() else 0.0
    kept = 0  # rules taken out
    out = ink.copy()
    found = []  # (line, its length, the axis it runs along), each apart from those crossing it
    pieces = []  # (piece, axis): the parts of lines the paper's noise broke off
    for lines, along in ((level, 1), (upright, 0)):
        parts, _ = ndimage.label(lines, structure=np.ones((3, 3)))
        for k, box in enumerate(ndimage.find_objects(parts), start=1):
            length = box[along].stop - box[along].start
            if length >= RULE * mask.shape[along] / 2:
                found.append((parts == k, length, along))
            else:
                pieces.append((parts == k, along))
    taken = set()  # the axes along which rules were taken out
    for line, length, along in found:
        # its thickness: the ink within a few pixels across it, over its length (a slice of a
        # thick stroke has the rest of that stroke beside it)
        band = ndimage.maximum_filter1d(line, 13, axis=1 - along)
        thickness = float((mask & band).sum()) / length
        # with nothing else to compare with, two lines or more are a page's rules, and one
        # line alone is a "1"
        if ((not others.any() and len(found) >= 2) or thickness < 0.75 * width
                or float(np.median(ink[line])) < 0.75 * strength):
            out[line] = 0.0
            kept += 1
            taken.add(along)
    for piece, along in pieces:  # the pieces go with their rules
        if along in taken:
            out[piece] = 0.0
    lines = level | upright
    # a stroke that crosses a rule: its pixels on the rule have ink just above and below
    gone = mask & (out == 0) & lines
    reach = 4
    above = np.zeros_like(mask)
    below = np.zeros_like(mask)
    left = without_specks(mask & ~gone)
    for d in range(1, reach + 1):
        above[d:] |= left[:-d]
        below[:-d] |= left[d:]
    crossed = gone & above & below
    out[crossed] = ink[crossed]
    return out, kept


def without_specks(mask: np.ndarray) -> np.ndarray:
    """The connected parts of `mask` larger than SPECK of the largest and than 16 pixels: the
    strokes, not the paper's noise."""
    from scipy import ndimage
    parts, count = ndimage.label(mask)
    if not count:
        return mask
    sizes = ndimage.sum(mask, parts, index=np.arange(1, count + 1))
    return np.isin(parts, 1 + np.flatnonzero(sizes >= max(16, SPECK * sizes.max())))


def rules_in(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` on level straight lines (within 4 degrees) that cover RULE of its
    width: for each slope, the rows of the mask sheared by it that hold that many pixels."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    # a column counts for a row when it has a pixel within one row of it: a line 1-2 pixels
    # thick, blurred and thresholded, is not whole in any single row
    near_ys, near_xs = np.nonzero(mask | np.roll(mask, 1, axis=0) | np.roll(mask, -1, axis=0))
    found = np.zeros(len(ys), dtype=bool)
    for degrees in range(-4, 5):
        slope = np.tan(np.radians(degrees))
        rows = np.round(ys - slope * (xs - w / 2)).astype(np.int64) + w
        counts = np.bincount(np.round(near_ys - slope * (near_xs - w / 2)).astype(np.int64) + w,
                             minlength=h + 3 * w)
        full = counts >= RULE * w
        if full.any():
            near = full | np.roll(full, 1) | np.roll(full, -1)
            found |= near[rows]
    lines = np.zeros_like(mask)
    lines[ys[found], xs[found]] = True
    return lines


def find_strokes(ink: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The strokes (a bool mask: the group of connected parts above Otsu's threshold that a
    person would point at) and their contrast: their median less the paper's, over the paper's
    spread (its values' standard deviation, at least 1/255). The group: the largest part (one
    clear of the picture's edge when it has a quarter of the size of the largest touching it),
    and every part larger than a speck within a third of the group's size of it."""
    from scipy import ndimage
    # Otsu's threshold, or half the darkest ink where that is higher: Otsu's splits the paper's
    # noise when the strokes are a sliver of a big picture
    threshold = max(otsu(ink), 0.5 * float(ndimage.gaussian_filter(ink, 1.0).max()))
    mask = ink > threshold
    if not mask.any() or mask.all():
        return None, 0.0
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    boxes = ndimage.find_objects(labels)
    h, w = mask.shape
    edge = np.array([b[0].start == 0 or b[1].start == 0 or b[0].stop == h or b[1].stop == w
                     for b in boxes])
    order = np.argsort(-sizes)
    main = int(order[0])
    clear = [k for k in order if not edge[k]]
    if edge[main] and clear and sizes[clear[0]] >= sizes[main] / 4:
        main = int(clear[0])
    # (top, left, bottom, right) of each part; the group grows until no part is near enough
    box = np.array([(b[0].start, b[1].start, b[0].stop, b[1].stop) for b in boxes])
    # parts touching the picture's edge (a page's edge, a shadow's) join a part clear of it only
    # when they are near: a digit cut by the edge of a tight crop touches it everywhere
    candidate = (sizes >= SPECK * sizes[main]) & (~edge | edge[main])
    group = np.zeros(count, dtype=bool)
    group[main] = True
    while True:
        top, left = box[group, 0].min(), box[group, 1].min()
        bottom, right = box[group, 2].max(), box[group, 3].max()
        gap = np.maximum.reduce([box[:, 0] - bottom, top - box[:, 2], box[:, 1] - right,
                                 left - box[:, 3], np.zeros(count, dtype=box.dtype)])
        joining = candidate & ~group & (gap <= max(bottom - top, right - left) / 3)
        if not joining.any():
            break
        group |= joining
    kept = np.isin(labels, 1 + np.flatnonzero(group))
    paper = ink[~mask]
    spread = max(float(paper.std()), 1 / 255)
    contrast = (float(np.median(ink[kept])) - float(np.median(paper))) / spread
    return kept, contrast


def stroke_width(strokes: np.ndarray) -> float:
    """The strokes' mean width in pixels: 4 x their mean distance to the paper, less 2 (a
    stroke of width w has distances 1, 2, ... to its middle and back)."""
    from scipy import ndimage
    if not strokes.any():
        return 0.0
    return 4 * float(ndimage.distance_transform_edt(strokes)[strokes].mean()) - 2


@dataclass(frozen=True)
class Form:
    """The strokes' form as MNIST's digits are measured: at 28x28, fitted into 20x20."""
    stroke: float  # their width in pixels (stroke_width)
    aspect: float  # their bounding box's width over its height
    scale: float  # 28x28 pixels per pixel of the picture


def form(strokes: np.ndarray) -> Form:
    rows, cols = np.flatnonzero(strokes.any(axis=1)), np.flatnonzero(strokes.any(axis=0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    scale = BOX / max(h, w)
    return Form(stroke_width(strokes) * scale, w / h, scale)


def with_mnist_pen(ink: np.ndarray, strokes: np.ndarray, shape: Form) -> tuple[
        np.ndarray, np.ndarray, str]:
    """The ink and strokes redrawn with MNIST's median pen when their width at 28x28 is outside
    MNIST's own range: a thin pen thickened, a marker thinned; what was done ("" when
    nothing)."""
    from scipy import ndimage
    width = shape.stroke
    low, high = MNIST_STROKES
    if low <= width <= high or width <= 0:
        return ink, strokes, ""
    wanted = MNIST_STROKE / shape.scale  # in the picture's pixels
    have = width / shape.scale
    if wanted > have:
        reach = ndimage.distance_transform_edt(~strokes)
        drawn = np.clip((wanted - have) / 2 + 1 - reach, 0, 1)
        how = "thickened"
    else:
        depth = ndimage.distance_transform_edt(strokes)
        drawn = np.clip(depth - (have - wanted) / 2, 0, 1)
        how = "thinned"
    drawn = drawn.astype(np.float32)
    if not (drawn > 0.5).any():  # thinned away: parts thinner than the rest
        return ink, strokes, ""
    return drawn, drawn > 0.5, (f"its strokes {how} to MNIST's width ({width:.1f} to "
                                f"{MNIST_STROKE:g} pixels at 28x28)")


def fitted(ink: np.ndarray, strokes: np.ndarray, side: int = SIDE) -> tuple[np.ndarray, str]:
    """The strokes' bounding box (widened to their faint edges), its paper set to 0, fitted into
    BOX x BOX keeping the aspect ratio and centred by its centre of mass in SIDE x SIDE (both
    scaled by side / SIDE)."""
    fit = round(side * BOX / SIDE)
    from scipy import ndimage
    edges = ndimage.binary_dilation(strokes, iterations=2) & (ink > 0.05)
    rows, cols = np.flatnonzero(edges.any(axis=1)), np.flatnonzero(edges.any(axis=0))
    box = np.where(edges, np.clip(ink, 0, 1), 0.0)
    box = box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
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
