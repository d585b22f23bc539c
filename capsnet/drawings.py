"""Pictures drawn the way people have them, for capsnet.digitcheck: handwritten strokes (an MNIST
digit's centre line redrawn with a pen, not a font), hand-drawn capital letters and symbols, on
phone photos of paper (vignetting, a soft or a hard shadow, a tilt, blur, noise), ruled notebook
pages, a chalkboard, a big scan; and colour scenes that hold no digit.

Every function takes a numpy Generator and gives a (H, W) grey or (H, W, 3) colour array of 0-255;
inks are (H, W) maps in [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# the fonts of digitcheck's typed digits (capsnet.nondigits types its digits in the others)
FONTS = {"DejaVu Sans": "DejaVuSans.ttf", "DejaVu Sans Bold": "DejaVuSans-Bold.ttf",
         "DejaVu Serif": "DejaVuSerif.ttf", "DejaVu Sans Mono": "DejaVuSansMono.ttf",
         "DejaVu Sans ExtraLight": "DejaVuSans-ExtraLight.ttf", "cmr10": "cmr10.ttf"}
FONT_FOLDERS = ("/usr/share/fonts/truetype/dejavu",)  # besides matplotlib's own fonts


def font_path(file: str) -> Path | None:
    import matplotlib
    for folder in (Path(matplotlib.get_data_path()) / "fonts" / "ttf", *map(Path, FONT_FOLDERS)):
        if (folder / file).is_file():
            return folder / file
    return None


PHOTO = (360, 480)  # a phone photo's shape, (H, W), at a size the check reads quickly

# letters as they are written in capitals, in a unit box (x right, y down): a list of strokes
# (polylines). O, I, S and Z are left out: written, they are the digits 0, 1, 5 and 2.
LETTERS = {
    "A": [[(0, 1), (.5, 0), (1, 1)], [(.22, .6), (.78, .6)]],
    "B": [[(0, 1), (0, 0), (.7, 0), (.9, .12), (.9, .35), (.7, .48), (0, .48)],
          [(.7, .48), (1, .62), (1, .86), (.75, 1), (0, 1)]],
    "C": [[(1, .1), (.75, 0), (.3, 0), (0, .3), (0, .7), (.3, 1), (.75, 1), (1, .9)]],
    "D": [[(0, 0), (0, 1), (.6, 1), (1, .7), (1, .3), (.6, 0), (0, 0)]],
    "E": [[(1, 0), (0, 0), (0, 1), (1, 1)], [(0, .5), (.75, .5)]],
    "F": [[(1, 0), (0, 0), (0, 1)], [(0, .48), (.75, .48)]],
    "G": [[(1, .15), (.7, 0), (.3, 0), (0, .3), (0, .7), (.3, 1), (.75, 1), (1, .75), (1, .55),
           (.55, .55)]],
    "H": [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, .5), (1, .5)]],
    "J": [[(.3, 0), (1, 0)], [(.7, 0), (.7, .8), (.5, 1), (.2, 1), (0, .8)]],
    "K": [[(0, 0), (0, 1)], [(1, 0), (0, .58)], [(.32, .4), (1, 1)]],
    "L": [[(0, 0), (0, 1), (.9, 1)]],
    "M": [[(0, 1), (0, 0), (.5, .62), (1, 0), (1, 1)]],
    "N": [[(0, 1), (0, 0), (1, 1), (1, 0)]],
    "P": [[(0, 1), (0, 0), (.7, 0), (1, .15), (1, .38), (.7, .52), (0, .52)]],
    "Q": [[(.3, 0), (0, .3), (0, .7), (.3, 1), (.7, 1), (1, .7), (1, .3), (.7, 0), (.3, 0)],
          [(.6, .7), (1.05, 1.1)]],
    "R": [[(0, 1), (0, 0), (.7, 0), (1, .15), (1, .35), (.7, .5), (0, .5)], [(.4, .5), (1, 1)]],
    "T": [[(0, 0), (1, 0)], [(.5, 0), (.5, 1)]],
    "U": [[(0, 0), (0, .75), (.25, 1), (.75, 1), (1, .75), (1, 0)]],
    "V": [[(0, 0), (.5, 1), (1, 0)]],
    "W": [[(0, 0), (.25, 1), (.5, .35), (.75, 1), (1, 0)]],
    "X": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "Y": [[(0, 0), (.5, .5), (1, 0)], [(.5, .5), (.5, 1)]],
}


def circle(cx: float, cy: float, r: float, start: float = 0.0, end: float = 2 * np.pi,
           points: int = 28) -> list[tuple[float, float]]:
    angles = np.linspace(start, end, points)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]


SYMBOLS = {
    "plus": [[(.5, 0), (.5, 1)], [(0, .5), (1, .5)]],
    "times": [[(.1, .1), (.9, .9)], [(.9, .1), (.1, .9)]],
    "asterisk": [[(.5, 0), (.5, 1)], [(.07, .25), (.93, .75)], [(.93, .25), (.07, .75)]],
    "hash": [[(.35, 0), (.25, 1)], [(.75, 0), (.65, 1)], [(0, .33), (1, .33)],
             [(0, .67), (1, .67)]],
    "equals": [[(0, .35), (1, .35)], [(0, .65), (1, .65)]],
    "arrow": [[(0, .5), (1, .5)], [(.65, .2), (1, .5), (.65, .8)]],
    "check": [[(0, .55), (.35, 1), (1, 0)]],
    "star": [[(.5, 0), (.62, .38), (1, .38), (.69, .62), (.81, 1), (.5, .76), (.19, 1),
              (.31, .62), (0, .38), (.38, .38), (.5, 0)]],
    "smiley": [circle(.5, .5, .5), [(.33, .33), (.35, .36)], [(.67, .33), (.69, .36)],
               circle(.5, .5, .3, .2 * np.pi, .8 * np.pi, 12)],
    "heart": [[(.5, 1), (0, .4), (0, .18), (.2, 0), (.4, .05), (.5, .25), (.6, .05), (.8, 0),
               (1, .18), (1, .4), (.5, 1)]],
    "triangle": [[(.5, 0), (1, 1), (0, 1), (.5, 0)]],
    "square": [[(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]],
    "question": [[(.1, .25), (.3, 0), (.7, 0), (.9, .2), (.9, .35), (.5, .55), (.5, .75)],
                 [(.5, .95), (.5, 1)]],
    "percent": [circle(.2, .2, .18), [(1, 0), (0, 1)], circle(.8, .8, .18)],
    "ampersand": [[(1, 1), (.2, .35), (.2, .12), (.4, 0), (.6, .12), (.6, .3), (0, .7),
                   (0, .9), (.2, 1), (.5, 1), (1, .55)]],
    "spiral": [[(.5 + .05 * t * np.cos(t), .5 + .05 * t * np.sin(t))
                for t in np.linspace(0, 9, 36)]],
    "sun": [circle(.5, .5, .22)] + [[(.5 + .32 * np.cos(a), .5 + .32 * np.sin(a)),
                                     (.5 + .5 * np.cos(a), .5 + .5 * np.sin(a))]
                                    for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)],
    "cross-in-circle": [circle(.5, .5, .5), [(.5, 0), (.5, 1)], [(0, .5), (1, .5)]],
    "wave": [[(t, .5 + .3 * np.sin(2 * np.pi * 1.5 * t)) for t in np.linspace(0, 1, 30)]],
    "at": [circle(.55, .5, .18), [(.73, .3), (.73, .62), (.85, .7), (1, .55), (1, .4),
                                 (.85, .1), (.55, 0), (.2, .1), (0, .45), (.15, .85), (.5, 1),
                                 (.8, .92)]],
}


def sketch(strokes: list[list[tuple[float, float]]], height: int, pen: float,
           rng: np.random.Generator) -> np.ndarray:
    """Strokes of a unit box drawn by hand `height` pixels high with a pen `pen` pixels wide:
    each point moved a little, the box narrowed or widened, the whole slanted; ink 1 on 0."""
    from PIL import Image, ImageDraw
    aspect = rng.uniform(0.6, 0.95)
    slant = rng.uniform(-0.15, 0.15)
    scale = 4  # drawn 4x larger, then reduced: smooth edges
    margin = pen * scale
    width = int(height * aspect * (1 + abs(slant)) * scale + 2 * margin) + 1
    canvas = Image.new("L", (width, int(height * 1.15 * scale + 2 * margin) + 1), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        points = np.asarray(stroke, dtype=np.float64)
        points = points + rng.normal(0, 0.025, points.shape)
        x = (points[:, 0] + slant * (1 - points[:, 1])) * aspect * height
        y = points[:, 1] * height
        xy = [(float(a) * scale + margin, float(b) * scale + margin) for a, b in zip(x, y)]
        draw.line(xy, fill=255, width=max(1, round(pen * scale)), joint="curve")
        r = pen * scale / 2
        for a, b in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse((a - r, b - r, a + r, b + r), fill=255)
    small = canvas.resize((max(1, canvas.width // scale), max(1, canvas.height // scale)),
                          Image.BOX)
    return trimmed(np.asarray(small, dtype=np.float32) / 255)


def handwritten(digit: np.ndarray, height: int, pen: float) -> np.ndarray:
    """An MNIST digit (28x28, ink 1 on 0) as written with a pen `pen` pixels wide, `height`
    pixels high: its shape enlarged, thinned to its centre line (the ridge of its distance
    transform) and drawn with a round pen along it."""
    from PIL import Image
    from scipy import ndimage
    ink = trimmed(digit)
    width = max(1, round(ink.shape[1] * height / ink.shape[0]))
    big = np.asarray(Image.fromarray((ink * 255).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC), dtype=np.float32) / 255
    shape = np.pad(big > 0.45, 2)
    depth = ndimage.distance_transform_edt(shape)
    ridge = shape & (depth >= ndimage.maximum_filter(depth, 3) - 0.6) & (depth >= 1)
    reach = ndimage.distance_transform_edt(~ridge)
    return trimmed(np.clip(pen / 2 + 0.5 - reach, 0, 1).astype(np.float32))


def trimmed(ink: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(ink.max(axis=1) > 0.05), np.flatnonzero(ink.max(axis=0) > 0.05)
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def placed(ink: np.ndarray, shape: tuple[int, int], centre: tuple[float, float],
           angle: float = 0.0) -> np.ndarray:
    """The ink turned by `angle` degrees and placed with its middle at `centre` (fractions of
    the height and width) on an empty (H, W) map."""
    from scipy import ndimage
    if angle:
        ink = np.clip(ndimage.rotate(ink, angle, reshape=True, order=1), 0, 1)
    h, w = ink.shape
    out = np.zeros(shape, dtype=np.float32)
    top = int(np.clip(centre[0] * shape[0] - h / 2, 0, max(shape[0] - h, 0)))
    left = int(np.clip(centre[1] * shape[1] - w / 2, 0, max(shape[1] - w, 0)))
    part = ink[:shape[0] - top, :shape[1] - left]
    out[top:top + part.shape[0], left:left + part.shape[1]] = part
    return out


def paper(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """White-ish paper, a little warm, (H, W, 3)."""
    level = rng.uniform(205, 240)
    tint = np.array([1.0, rng.uniform(0.97, 1.0), rng.uniform(0.9, 0.98)])
    return np.ones((*shape, 3)) * level * tint


def ruled(page: np.ndarray, rng: np.random.Generator, spacing: float) -> tuple[np.ndarray,
                                                                              float]:
    """A notebook page: faint blue rules every `spacing` pixels and a red margin line; the
    first rule's row."""
    h, w, _ = page.shape
    first = rng.uniform(0.1, 0.4) * spacing
    blue = np.array([rng.uniform(120, 170), rng.uniform(160, 190), rng.uniform(200, 230)])
    strength = rng.uniform(0.5, 0.85)
    thickness = rng.uniform(1.0, 2.2)
    rows = np.arange(h)[:, None]
    line = np.zeros((h, 1))
    for y in np.arange(first, h, spacing):
        line = np.maximum(line, np.clip(thickness / 2 + 0.5 - np.abs(rows - y), 0, 1))
    page = page * (1 - strength * line[..., None]) + blue * strength * line[..., None]
    margin = rng.uniform(0.08, 0.16) * w
    cols = np.arange(w)[None, :]
    red = np.array([rng.uniform(200, 235), rng.uniform(90, 140), rng.uniform(100, 150)])
    bar = np.clip(thickness / 2 + 0.5 - np.abs(cols - margin), 0, 1)[..., None] * strength
    return page * (1 - bar) + red * bar, first


def inked(page: np.ndarray, ink: np.ndarray, colour: np.ndarray, opacity: float) -> np.ndarray:
    alpha = (ink * opacity)[..., None]
    return page * (1 - alpha) + colour * alpha


def lit(picture: np.ndarray, rng: np.random.Generator, shadow: str = "") -> np.ndarray:
    """A photo's light on `picture`: vignetting, and a "soft" shadow from one side (up to half
    dark) or a "hard" one (a straight edge at any angle, 30-50% dark, the digit's side or not)."""
    h, w = picture.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    y, x = y / h - 0.5, x / w - 0.5
    light = 1 - rng.uniform(0.08, 0.25) * (x * x + y * y) / 0.5
    if shadow:
        angle = rng.uniform(0, 2 * np.pi)
        along = np.cos(angle) * x + np.sin(angle) * y  # -0.7 .. 0.7
        if shadow == "soft":
            depth = rng.uniform(0.3, 0.5)
            edge = rng.uniform(-0.1, 0.2)
            light = light * (1 - depth * np.clip((along - edge) / 0.45 + 0.5, 0, 1))
        else:
            from scipy import ndimage
            depth = rng.uniform(0.3, 0.5)
            edge = rng.uniform(-0.25, 0.25)
            dark = (along > edge).astype(np.float64)
            dark = ndimage.gaussian_filter(dark, rng.uniform(1.0, 3.0))
            light = light * (1 - depth * dark)
    return picture * light[..., None]


def finished(picture: np.ndarray, rng: np.random.Generator, blur: tuple[float, float] = (0.6, 1.3),
             noise: tuple[float, float] = (2, 6)) -> np.ndarray:
    """A camera's blur and noise."""
    from scipy import ndimage
    sigma = rng.uniform(*blur)
    picture = ndimage.gaussian_filter(picture, (sigma, sigma, 0))
    return np.clip(picture + rng.normal(0, rng.uniform(*noise), picture.shape), 0, 255)


BALLPOINT_BLUE = ((20, 45), (35, 70), (110, 170))
BLACK = ((15, 45), (15, 45), (15, 45))


def colour_of(ranges: tuple[tuple[int, int], ...], rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.uniform(*r) for r in ranges])


def phone_photo(ink: np.ndarray | None, rng: np.random.Generator, shadow: str = "",
                tilt: float = 8.0, thin: bool = False) -> np.ndarray:
    """A phone photo of a page with `ink` (a stroke map, None for a blank page) in blue or black
    ballpoint, off centre, tilted up to `tilt` degrees."""
    page = paper(PHOTO, rng)
    if ink is not None:
        centre = (0.5 + rng.uniform(-0.15, 0.15), 0.5 + rng.uniform(-0.15, 0.15))
        strokes = placed(ink, PHOTO, centre, rng.uniform(-tilt, tilt))
        ranges = BALLPOINT_BLUE if thin or rng.random() < 0.6 else BLACK
        page = inked(page, strokes, colour_of(ranges, rng), rng.uniform(0.8, 1.0))
    return finished(lit(page, rng, shadow), rng)


def notebook(ink: np.ndarray | None, rng: np.random.Generator, shadow: str = "") -> np.ndarray:
    """A phone photo of a ruled notebook page with the digit written between two rules."""
    h, w = PHOTO
    spacing = rng.uniform(0.17, 0.24) * h
    page, first = ruled(paper(PHOTO, rng), rng, spacing)
    if ink is not None:
        line = int(rng.integers(1, max(2, int((h - first) / spacing) - 1)))
        middle = first + (line + 0.5) * spacing + rng.uniform(-0.1, 0.1) * spacing
        strokes = placed(ink, PHOTO, (middle / h, rng.uniform(0.35, 0.7)), rng.uniform(-6, 6))
        page = inked(page, strokes, colour_of(BALLPOINT_BLUE if rng.random() < 0.6 else BLACK,
                                              rng), rng.uniform(0.8, 1.0))
    return finished(lit(page, rng, shadow), rng)


def chalkboard(ink: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Chalk on a dark green or black board, with smudges of old chalk and a grainy stroke."""
    from scipy import ndimage
    h, w = PHOTO
    board = np.array([rng.uniform(25, 50), rng.uniform(40, 70), rng.uniform(35, 55)])
    smudge = ndimage.gaussian_filter(rng.normal(0, 1, PHOTO), 18)
    smudge = np.clip(smudge / smudge.std(), 0, None) * rng.uniform(4, 12)
    picture = np.ones((*PHOTO, 3)) * board + smudge[..., None]
    if ink is not None:
        strokes = placed(ink, PHOTO, (0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1)),
                         rng.uniform(-8, 8))
        grain = np.clip(0.55 + 0.45 * ndimage.gaussian_filter(rng.random(PHOTO), 0.8) * 2 - 0.45,
                        0, 1)
        picture = inked(picture, strokes * grain, np.full(3, rng.uniform(190, 235)), 0.95)
    return finished(lit(picture, rng), rng, noise=(2, 5))


def scan(ink: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A grey 1200x1600 scan of white paper, a small pen digit somewhere on it."""
    shape = (1200, 1600)
    page = np.full(shape, rng.uniform(235, 250), dtype=np.float32)
    if ink is not None:
        strokes = placed(ink, shape, (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)))
        page = page * (1 - 0.95 * strokes) + rng.uniform(15, 45) * 0.95 * strokes
    return np.clip(page + rng.normal(0, 2, shape).astype(np.float32), 0, 255)


def marker(ink: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Black marker on white paper, photographed in even light."""
    page = paper(PHOTO, rng)
    if ink is not None:
        strokes = placed(ink, PHOTO, (0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1)))
        page = inked(page, strokes, colour_of(BLACK, rng), 1.0)
    return finished(lit(page, rng), rng, blur=(0.5, 1.0))


def scene(size: int, rng: np.random.Generator) -> np.ndarray:
    """A colour scene with no digit, (size, size, 3): sky over ground with things in it (a car,
    a tree, a house, balls, boxes), or one object on a plain ground; drawn at 200x200."""
    from PIL import Image, ImageDraw, ImageFilter
    big = 200

    def colour() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(0, 256, 3))

    picture = Image.new("RGB", (big, big), colour())
    draw = ImageDraw.Draw(picture)
    if rng.random() < 0.6:  # a landscape: sky, ground, and things standing on it
        horizon = int(rng.uniform(0.4, 0.7) * big)
        sky = np.array([rng.uniform(90, 200), rng.uniform(140, 220), rng.uniform(200, 255)])
        for row in range(horizon):
            draw.line([(0, row), (big, row)], fill=tuple(int(c) for c in sky * (0.8 + 0.2 * row
                                                                                 / horizon)))
        draw.rectangle((0, horizon, big, big), fill=colour())
        things = int(rng.integers(1, 4))
    else:
        horizon, things = int(big * rng.uniform(0.6, 0.75)), 1
    for _ in range(things):
        kind = rng.integers(0, 4)
        x = rng.uniform(0.15, 0.85) * big
        s = rng.uniform(0.2, 0.45) * big
        if kind == 0:  # a car: a body, a cabin, two wheels
            body = colour()
            draw.rectangle((x - s / 2, horizon - s * 0.45, x + s / 2, horizon - s * 0.15),
                           fill=body)
            draw.rectangle((x - s / 4, horizon - s * 0.7, x + s / 4, horizon - s * 0.45),
                           fill=body)
            for wheel in (x - s / 3, x + s / 3):
                draw.ellipse((wheel - s / 8, horizon - s / 4, wheel + s / 8, horizon),
                             fill=(20, 20, 20))
        elif kind == 1:  # a tree
            draw.rectangle((x - s / 12, horizon - s / 2, x + s / 12, horizon), fill=(110, 70, 30))
            draw.ellipse((x - s / 3, horizon - s * 1.1, x + s / 3, horizon - s * 0.4),
                         fill=(int(rng.integers(20, 80)), int(rng.integers(100, 180)), 40))
        elif kind == 2:  # a house
            draw.rectangle((x - s / 2, horizon - s * 0.6, x + s / 2, horizon), fill=colour())
            draw.polygon([(x - s * 0.6, horizon - s * 0.6), (x, horizon - s),
                          (x + s * 0.6, horizon - s * 0.6)], fill=colour())
            draw.rectangle((x - s / 10, horizon - s * 0.3, x + s / 10, horizon), fill=colour())
        else:  # a ball or a box
            y = horizon - s / 2
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x - s / 2, y - s / 2, x + s / 2, y + s / 2), fill=colour())
    picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    array = np.asarray(picture, dtype=np.float64) + rng.normal(0, 4, (big, big, 3))
    if size != big:
        small = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.LANCZOS)
        array = np.asarray(small, dtype=np.float64)
    return np.clip(array, 0, 255)
