"""The pictures the no-digit rule (capsnet.digitrule) learns from, each made from a seed and an
MNIST training digit and prepared as capsnet.predict prepares a picture (capsnet.digits): a
(28, 28) array in [0, 1], or None where the preparation finds no digit in it.

No digit: capital and small letters and symbols in the fonts matplotlib ships, slanted, turned
and wobbled as a hand does, then mostly drawn again by pen along their centre line; MNIST digits
mirrored or turned into shapes no digit has (a 3 mirrored, a 4 upside down, an 8 on its side);
scribbles of random pen strokes, polygons and spirals; colour pictures of random shapes. None comes from
capsnet.drawings' letters, symbols or scenes, which measure the rule (capsnet.digitcheck).
Digits: MNIST's as they are, drawn again by pen, small somewhere in a 28x28 image, and typed in
the fonts that digitcheck's typed digits do not use.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import drawings
from .digits import prepare_digit

# glyphs people write that no digit looks like: not O, I, S, Z, l, o, s, z, b, g or q, nor
# brackets, slashes and bars (a "1")
LETTERS = "ABCDEFGHJKLMNPQRTUVWXYacdefhkmnprtuvwxy"
SYMBOLS = "+*#=%&@?$<>~^×÷±→←↑↓↔★☆♥♦♣♠☺✓✗△□◇∞≈≠≤≥∑∫√πΩαβγλμφψ€£¥§¶©®"
MISSING = "\U0010fffe"  # a character no font has: its box is what a font draws for one it lacks


@dataclass(frozen=True)
class Kind:
    digit: bool  # whether its pictures hold a digit
    make: Callable[[np.random.Generator, np.ndarray, int], np.ndarray | None]
    share: tuple[float, float]  # which MNIST training digits, as fractions of those given
    seed: int  # of its pictures' random numbers


def fonts() -> list[Path]:
    """matplotlib's text fonts (not its pieces of large symbols)."""
    import matplotlib
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return sorted(path for path in folder.glob("*.ttf")
                  if not any(part in path.name for part in ("LastResort", "Siz", "cmex",
                                                             "NonUni", "Display")))


def glyph(character: str, font: Path, size: int = 120) -> np.ndarray | None:
    """A character's ink (1 on 0) in `font`, trimmed; None where the font lacks it."""
    from PIL import Image, ImageDraw, ImageFont
    face = ImageFont.truetype(str(font), size)

    def drawn(text: str) -> np.ndarray | None:
        canvas = Image.new("L", (3 * size, 3 * size), 0)
        ImageDraw.Draw(canvas).text((size, size // 2), text, fill=255, font=face)
        ink = np.asarray(canvas, dtype=np.float32) / 255
        return drawings.trimmed(ink) if ink.max() >= 0.5 else None
    ink, missing = drawn(character), drawn(MISSING)
    if ink is None or (missing is not None and missing.shape == ink.shape
                       and np.abs(missing - ink).max() < 0.1):
        return None
    return ink


def by_hand(ink: np.ndarray, rng: np.random.Generator, wobble: float = 0.04) -> np.ndarray | None:
    """The ink turned (up to 11 degrees), slanted, narrowed or widened, and wobbled by a smooth
    random displacement of `wobble` of its size."""
    from scipy import ndimage
    size = max(ink.shape)
    ink = np.pad(ink, size // 3)
    y, x = np.mgrid[0:ink.shape[0], 0:ink.shape[1]].astype(np.float64)
    y, x = y - ink.shape[0] / 2, x - ink.shape[1] / 2
    turn, slant = rng.uniform(-0.2, 0.2), rng.uniform(-0.25, 0.25)
    wide, tall = rng.uniform(0.75, 1.25), rng.uniform(0.85, 1.15)
    moves = [ndimage.gaussian_filter(rng.normal(0, 1, ink.shape), size / 3) for _ in range(2)]
    moves = [wobble * size * move / (move.std() + 1e-9) for move in moves]
    rows = (np.sin(turn) * x + np.cos(turn) * y) / tall + ink.shape[0] / 2 + moves[0]
    cols = ((np.cos(turn) * x - np.sin(turn) * y) / wide + slant * y + ink.shape[1] / 2
            + moves[1])
    out = ndimage.map_coordinates(ink, [rows, cols], order=1)
    return drawings.trimmed(out) if out.max() >= 0.3 else None


def by_pen(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ink drawn again along its centre line, 60-160 pixels high, with a pen 3.5-9% of that."""
    height = int(rng.uniform(60, 160))
    return drawings.handwritten(ink, height, max(1.5, height * rng.uniform(0.035, 0.09)))


def prepared(ink: np.ndarray | None) -> np.ndarray | None:
    """Ink (1 on 0) on a margin of ground, as capsnet.predict prepares it."""
    if ink is None:
        return None
    return as_array(prepare_digit(np.pad(ink, 12).astype(np.float32), "no"))


def as_array(digit) -> np.ndarray | None:
    return None if digit.tensor is None else digit.tensor[0].numpy()


def mnist(rng: np.random.Generator, digit: np.ndarray, label: int) -> np.ndarray | None:
    return as_array(prepare_digit(digit, "no"))


def mnist_by_pen(rng: np.random.Generator, digit: np.ndarray, label: int) -> np.ndarray | None:
    ink = by_hand(digit, rng, 0.05) if rng.random() < 0.5 else drawings.trimmed(digit)
    return None if ink is None else prepared(by_pen(ink, rng))


def mnist_small(rng: np.random.Generator, digit: np.ndarray, label: int) -> np.ndarray | None:
    """The digit 9-16 pixels high anywhere in a 28x28 image."""
    from PIL import Image
    ink = drawings.trimmed(digit)
    height = int(rng.integers(9, 17))
    width = max(1, round(ink.shape[1] * height / ink.shape[0]))
    small = np.asarray(Image.fromarray((ink * 255).astype(np.uint8)).resize(
        (width, height), Image.BILINEAR), dtype=np.float32) / 255
    picture = np.zeros((28, 28), dtype=np.float32)
    top, left = int(rng.integers(0, 29 - height)), int(rng.integers(0, 29 - width))
    picture[top:top + height, left:left + width] = small
    return as_array(prepare_digit(picture, "no"))


def typed(rng: np.random.Generator, digit: np.ndarray, label: int) -> np.ndarray | None:
    """The digit `label` in a font that digitcheck's typed digits do not use."""
    measured = {name for name in drawings.FONTS.values()}
    choices = [path for path in fonts() if path.name not in measured
               and path.name not in ("cmsy10.ttf", "cmmi10.ttf")]  # symbols, not digits
    ink = glyph(str(label), choices[int(rng.integers(len(choices)))])
    if ink is not None and rng.random() < 0.7:
        ink = by_hand(ink, rng, 0.02)
    if ink is not None and rng.random() < 0.4:
        ink = by_pen(ink, rng)
    return prepared(ink)


def letter_or_symbol(rng: np.random.Generator, digit: np.ndarray,
                     label: int) -> np.ndarray | None:
    table = LETTERS if rng.random() < 0.6 else SYMBOLS
    choices = fonts()
    ink = glyph(table[int(rng.integers(len(table)))], choices[int(rng.integers(len(choices)))])
    ink = None if ink is None else by_hand(ink, rng)
    if ink is not None and rng.random() < 0.8:
        ink = by_pen(ink, rng)
    return prepared(ink)


# how each digit is made a shape no digit has: mirrored, turned a quarter, upside down
TURNS = {"mirrored": ((3, 4, 6, 7, 9), lambda d, rng: d[:, ::-1]),
         "a quarter turn": ((2, 3, 4, 5, 6, 7, 8, 9),
                            lambda d, rng: np.rot90(d, 1 if rng.random() < 0.5 else 3)),
         "upside down": ((4, 7), lambda d, rng: d[::-1, :])}


def turned(rng: np.random.Generator, digit: np.ndarray, label: int) -> np.ndarray | None:
    labels, turn = list(TURNS.values())[int(rng.integers(len(TURNS)))]
    if label not in labels:
        return None
    shape = np.ascontiguousarray(turn(digit, rng))
    if rng.random() < 0.5:
        return prepared(by_pen(drawings.trimmed(shape), rng))
    return as_array(prepare_digit(shape, "no"))


def scribble(rng: np.random.Generator, digit: np.ndarray, label: int) -> np.ndarray | None:
    """One to four pen strokes (zigzags, arcs, lines through random points), half of them
    with a polygon of 3-6 corners or a spiral."""
    strokes = []
    closed = rng.random() < 0.5
    if closed and rng.random() < 0.5:
        corners = int(rng.integers(3, 7))
        angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, corners + 1)
        angles[:-1] += rng.uniform(-0.3, 0.3, corners)
        angles[-1] = angles[0] + 2 * np.pi
        strokes.append(np.stack([0.5 + 0.5 * np.cos(angles), 0.5 + 0.5 * np.sin(angles)], 1))
    elif closed:
        turns = np.linspace(0, rng.uniform(8, 16), 40)
        strokes.append(np.stack([0.5 + 0.035 * turns * np.cos(turns),
                                 0.5 + 0.035 * turns * np.sin(turns)], 1))
    for _ in range(int(rng.integers(1, 4) if closed else rng.integers(2, 5))):
        kind = rng.integers(3)
        if kind == 0:
            strokes.append(rng.uniform(0, 1, (int(rng.integers(2, 6)), 2)))
        elif kind == 1:
            centre, radius = rng.uniform(0.2, 0.8, 2), rng.uniform(0.1, 0.5)
            start = rng.uniform(0, 2 * np.pi)
            angles = np.linspace(start, start + rng.uniform(1, 6.3), 20)
            strokes.append(np.stack([centre[0] + radius * np.cos(angles),
                                     centre[1] + radius * np.sin(angles)], 1))
        else:
            n = int(rng.integers(3, 8))
            strokes.append(np.stack([np.linspace(0, 1, n), rng.uniform(0, 1, n)], 1))
    height = int(rng.uniform(60, 160))
    lines = [[(float(a), float(b)) for a, b in points] for points in strokes]
    return prepared(drawings.sketch(lines, height, max(2.0, height * rng.uniform(0.04, 0.08)),
                                    rng))


def colour_shapes(rng: np.random.Generator, digit: np.ndarray,
                  label: int) -> np.ndarray | None:
    """Rectangles, ellipses and polygons of random colours on a plain or graded ground, blurred
    and noisy, at 32 to 160 pixels."""
    from PIL import Image, ImageDraw, ImageFilter
    big = 160

    def colour() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(0, 256, 3))
    picture = Image.new("RGB", (big, big), colour())
    draw = ImageDraw.Draw(picture)
    if rng.random() < 0.5:
        top, bottom = np.array(colour()), np.array(colour())
        for row in range(big):
            shade = top + (bottom - top) * row / big
            draw.line([(0, row), (big, row)], fill=tuple(int(v) for v in shade))
    for _ in range(int(rng.integers(1, 8))):
        left, top = rng.uniform(-20, big, 2)
        box = (left, top, left + rng.uniform(10, 120), top + rng.uniform(10, 120))
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle(box, fill=colour())
        elif kind == 1:
            draw.ellipse(box, fill=colour())
        else:
            corners = rng.uniform(0, big, (int(rng.integers(3, 7)), 2))
            draw.polygon([(float(a), float(b)) for a, b in corners], fill=colour())
    picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 2)))
    array = np.asarray(picture, dtype=np.float64) + rng.normal(0, rng.uniform(1, 8),
                                                               (big, big, 3))
    side = int(rng.choice([32, 64, 100, 160]))
    picture = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).resize(
        (side, side), Image.LANCZOS)
    return as_array(prepare_digit(picture, "auto"))


# the digit kinds' shares are apart, and apart from the held-out digits that set the threshold
# (digitrule.HELD_OUT); mirrored and turned digits are made from theirs, and letters, scribbles
# and shapes are as many as theirs
KINDS = {
    "MNIST digits": Kind(True, mnist, (0.0, 0.42), 0),
    "MNIST digits drawn again by pen": Kind(True, mnist_by_pen, (0.5, 0.633), 2),
    "MNIST digits small in a 28x28 image": Kind(True, mnist_small, (0.633, 0.717), 3),
    "typed digits": Kind(True, typed, (0.717, 0.8), 4),
    "letters and symbols": Kind(False, letter_or_symbol, (0.0, 0.233), 6),
    "digits mirrored or turned": Kind(False, turned, (0.767, 1.0), 5),
    "scribbles": Kind(False, scribble, (0.0, 0.133), 7),
    "colour shapes": Kind(False, colour_shapes, (0.0, 0.133), 8),
}


def one(job: tuple[str, int, int, np.ndarray, int]) -> np.ndarray | None:
    kind, seed, n, digit, label = job
    return KINDS[kind].make(np.random.default_rng([seed, n]), digit, label)


def made(kind: str, digits: np.ndarray, labels: np.ndarray, seed: int,
         mapped: Callable = map) -> np.ndarray:
    """One picture of `kind` from each MNIST digit (N, 28, 28) in [0, 1]: the (M, 28, 28) of
    those in which the preparation found a digit; `mapped` a map, a process pool's for one."""
    jobs = [(kind, seed, n, digit, int(label)) for n, (digit, label)
            in enumerate(zip(digits, labels))]
    kept = [picture for picture in mapped(one, jobs) if picture is not None]
    return np.stack(kept) if kept else np.zeros((0, 28, 28), dtype=np.float32)
