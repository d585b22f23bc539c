"""How the shipped MNIST model reads pictures of digits as people make them: `python -m
capsnet.digitcheck --out DIR [--data-dir ROOT] [--all-mnist] [--package TREE]`.

It draws every picture itself, seeded: typed digits in six fonts (DejaVu Sans, Sans Bold, Serif,
Sans Mono, Sans ExtraLight, Computer Modern's cmr10; 60 per variant, 6 fonts x 10 digits) and,
when ROOT holds MNIST, the first MNIST test digits (100 per variant, 30 for the small ones), in
the variants of VARIANTS: clean, photo-like (paper with shading, noise, blur, off centre, JPEG),
on a flat grey page, transparent, small off centre, and blanks that hold no digit. Each variant's
pictures are classified in one `python -m capsnet.predict --pretrained mnist --json` call (of
this package, or of the checkout TREE: to count an earlier version on the same pictures), and
DIR gets the pictures, results.json and results.md (the table, right out of each variant's
count). A blank is right when the command says it holds no digit. `--all-mnist` adds the 10,000
MNIST test digits saved as PNG files, through the same command.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import drawings
from .cli import DATA_DIR_ENV, ArgumentParser, exit_status, exit_with
from .errors import UserError

def typed(digit: int, font: Path, size: int = 120) -> np.ndarray:
    """A digit in `font`, ink 1 on 0, its canvas cropped to the glyph with a margin."""
    from PIL import Image, ImageDraw, ImageFont
    face = ImageFont.truetype(str(font), size)
    canvas = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(canvas).text((size // 2, size // 4), str(digit), fill=255, font=face)
    ink = np.asarray(canvas, dtype=np.float32) / 255
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def resized(ink: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image
    width = max(1, round(ink.shape[1] * height / ink.shape[0]))
    picture = Image.fromarray((ink * 255).astype(np.uint8)).resize((width, height),
                                                                   Image.LANCZOS)
    return np.asarray(picture, dtype=np.float32) / 255


def on_page(ink: np.ndarray, size: int, rng: np.random.Generator, height: int,
            off_centre: float = 0.0) -> np.ndarray:
    """The ink (1 on 0) scaled to `height` pixels at a place on a size x size page (0: none),
    up to `off_centre` of the page away from its centre."""
    digit = resized(ink, height)
    h, w = digit.shape
    shift = (rng.uniform(-off_centre, off_centre, 2) * size).astype(int)
    top = int(np.clip((size - h) // 2 + shift[0], 0, size - h))
    left = int(np.clip((size - w) // 2 + shift[1], 0, size - w))
    page = np.zeros((size, size), dtype=np.float32)
    page[top:top + h, left:left + w] = digit
    return page


def photo(ink_map: np.ndarray, rng: np.random.Generator, paper: float | None = None) -> np.ndarray:
    """Dark ink on paper, 0-255: the paper's level, a slow shading across the page, noise and a
    slight blur (`paper` given: a flat page of that level, no shading)."""
    from scipy import ndimage
    h, w = ink_map.shape
    if paper is None:
        level = rng.uniform(200, 240)
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        angle = rng.uniform(0, 2 * np.pi)
        ground = level + rng.uniform(15, 35) * ((np.cos(angle) * x + np.sin(angle) * y) - 0.5)
        ink_level = rng.uniform(20, 70)
        picture = ground * (1 - ink_map) + ink_level * ink_map
        picture = ndimage.gaussian_filter(picture, rng.uniform(0.6, 1.2))
        picture = picture + rng.normal(0, rng.uniform(3, 8), picture.shape)
    else:
        picture = paper * (1 - ink_map) + 10 * ink_map
    return np.clip(picture, 0, 255)


def save(array: np.ndarray, path: Path, quality: int = 0) -> None:
    """A grey (H, W) or colour (H, W, 3) array of 0-255 as PNG, or with `quality` as JPEG."""
    from PIL import Image
    picture = Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8))
    if quality:
        picture.convert("RGB").save(path.with_suffix(".jpg"), quality=quality)
    else:
        picture.save(path, compress_level=1)  # noisy pictures compress slowly and little


def transparent(ink: np.ndarray, colour: tuple[int, int, int], path: Path) -> None:
    from PIL import Image
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = (ink * 255).round().astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)


@dataclass(frozen=True)
class Variant:
    name: str
    # what each picture is drawn from: "typed" (a font's digit), "mnist" (an MNIST test digit),
    # "letters" or "symbols" (drawings.LETTERS', SYMBOLS' strokes), "blank" (nothing)
    source: str
    count: int  # pictures at most (MNIST: digits taken)
    make: Callable[[Any, np.random.Generator, Path], None]  # (its source, rng, path) -> a file
    clean: bool = False  # a picture as clean as the model's data
    sure: bool = True  # every picture is read right (the suite reads five of each)


def page_200(ink, rng, path):
    save(255 * (1 - on_page(ink, 200, rng, 120)), path)


def written(draw: Callable[[np.ndarray, np.random.Generator], np.ndarray],
            height: tuple[float, float], pen: tuple[float, float],
            quality: tuple[int, int] = (0, 0)) -> Callable[[np.ndarray, np.random.Generator, Path],
                                                            None]:
    """An MNIST digit written by hand (drawings.handwritten) `height` pixels high with a pen of
    `pen` of that height, drawn on a page by `draw`, saved as PNG or as JPEG of `quality`."""
    def make(ink: np.ndarray, rng: np.random.Generator, path: Path) -> None:
        h = rng.uniform(*height)
        strokes = drawings.handwritten(ink, round(h), max(1.5, h * rng.uniform(*pen)))
        save(draw(strokes, rng), path, int(rng.integers(*quality)) if quality[1] else 0)
    return make


def sketched(height: tuple[float, float], pen: tuple[float, float]) -> Callable[
        [list, np.random.Generator, Path], None]:
    """A letter's or symbol's strokes drawn by hand (drawings.sketch) on a phone photo of paper
    in even light or under a soft shadow, as JPEG."""
    def make(strokes: list, rng: np.random.Generator, path: Path) -> None:
        h = rng.uniform(*height)
        ink = drawings.sketch(strokes, round(h), max(2.0, h * rng.uniform(*pen)), rng)
        save(drawings.phone_photo(ink, rng, "soft" if rng.random() < 0.5 else ""), path,
             int(rng.integers(60, 85)))
    return make


VARIANTS = (
    Variant("typed, 200x200 dark on white, PNG", "typed", 60, page_200, clean=True),
    Variant("typed, 200x200 white on black, PNG", "typed", 60,
            lambda ink, rng, path: save(255 * on_page(ink, 200, rng, 120), path), clean=True),
    Variant("typed, 200x200 dark on white, JPEG", "typed", 60,
            lambda ink, rng, path: save(255 * (1 - on_page(ink, 200, rng, 120)), path, 85),
            clean=True),
    Variant("typed, photo-like (shaded paper, noise, blur, off centre, JPEG)", "typed", 60,
            lambda ink, rng, path: save(photo(on_page(ink, 240, rng, 110, 0.15), rng), path,
                                        int(rng.integers(60, 90)))),
    Variant("typed, black ink on a flat grey page (200)", "typed", 60,
            lambda ink, rng, path: save(photo(on_page(ink, 200, rng, 120), rng, 200.0), path)),
    Variant("typed, white ink on a transparent PNG", "typed", 60,
            lambda ink, rng, path: transparent(on_page(ink, 200, rng, 120), (255, 255, 255),
                                               path)),
    Variant("typed, coloured ink on a transparent PNG", "typed", 60,
            lambda ink, rng, path: transparent(on_page(ink, 200, rng, 120),
                                               tuple(int(c) for c in rng.integers(0, 200, 3)),
                                               path)),
    Variant("typed, small and off centre on a 300x300 page", "typed", 60,
            lambda ink, rng, path: save(255 * (1 - on_page(ink, 300, rng, 40, 0.3)), path)),
    Variant("MNIST, as saved (28x28 PNG)", "mnist", 100,
            lambda ink, rng, path: save(255 * ink, path), clean=True),
    Variant("MNIST, inverted (28x28 PNG)", "mnist", 100,
            lambda ink, rng, path: save(255 * (1 - ink), path), clean=True),
    Variant("MNIST, enlarged 5x on a white 200x200 page", "mnist", 100,
            lambda ink, rng, path: save(255 * (1 - on_page(trim(ink), 200, rng, 100)), path),
            clean=True),
    Variant("MNIST, photo-like (shaded paper, noise, blur, off centre, JPEG)", "mnist", 100,
            lambda ink, rng, path: save(photo(on_page(trim(ink), 240, rng, 110, 0.15), rng),
                                        path, int(rng.integers(60, 90)))),
    Variant("MNIST, small in a corner of a 28x28 image", "mnist", 30,
            lambda ink, rng, path: save(255 * corner(ink, rng), path)),
    Variant("blank: white page, black page, shaded paper, a beige wall", "blank", 40,
            lambda _, rng, path: blank(rng, path)),
    Variant("handwritten, black marker on white paper", "mnist", 20,
            written(drawings.marker, (150, 220), (0.05, 0.08))),
    Variant("handwritten, chalk on a board", "mnist", 20,
            written(drawings.chalkboard, (140, 210), (0.06, 0.1), quality=(75, 90))),
    Variant("handwritten, small on a 1600x1200 scan", "mnist", 20,
            written(drawings.scan, (45, 80), (0.05, 0.08))),
    Variant("handwritten, ruled notebook page (half with a soft shadow)", "mnist", 20,
            written(lambda ink, rng: drawings.notebook(ink, rng, "soft" if rng.random() < 0.5
                                                       else ""), (55, 80), (0.04, 0.07),
                    quality=(60, 85))),
    Variant("handwritten, phone photo: soft shadow, ballpoint, tilt, blur, JPEG, off centre",
            "mnist", 20, written(lambda ink, rng: drawings.phone_photo(ink, rng, "soft"),
                                 (110, 180), (0.035, 0.06), quality=(60, 85))),
    Variant("handwritten, phone photo: a hard shadow edge across the page, tilted", "mnist", 20,
            written(lambda ink, rng: drawings.phone_photo(ink, rng, "hard", tilt=15),
                    (110, 180), (0.035, 0.06), quality=(60, 85))),
    Variant("handwritten, thin blue ballpoint (1-2% of the photo's side)", "mnist", 20,
            written(lambda ink, rng: drawings.phone_photo(ink, rng, thin=True), (110, 170),
                    (0.03, 0.045), quality=(60, 85))),
    Variant("blank: phone photos of paper (soft, hard or no shadow)", "blank", 20,
            lambda _, rng, path: save(drawings.phone_photo(
                None, rng, ("soft", "hard", "")[int(rng.integers(0, 3))]), path,
                int(rng.integers(60, 85)))),
    Variant("blank: ruled notebook pages (half with a soft shadow)", "blank", 20,
            lambda _, rng, path: save(drawings.notebook(None, rng, "soft" if rng.random() < 0.5
                                                        else ""), path, int(rng.integers(60, 85)))),
    Variant("blank: chalkboards", "blank", 20,
            lambda _, rng, path: save(drawings.chalkboard(None, rng), path, 85)),
    Variant("blank: 1600x1200 scans", "blank", 20,
            lambda _, rng, path: save(drawings.scan(None, rng), path)),
    Variant("hand-drawn capital letters (not O, I, S, Z: written, they are 0, 1, 5, 2)",
            "letters", len(drawings.LETTERS), sketched((110, 180), (0.04, 0.08)), sure=False),
    Variant("hand-drawn symbols", "symbols", len(drawings.SYMBOLS),
            sketched((110, 180), (0.04, 0.08)), sure=False),
    Variant("colour scenes and objects, 32x32", "blank", 20,
            lambda _, rng, path: save(drawings.scene(32, rng), path), sure=False),
    Variant("colour scenes and objects, 200x200", "blank", 20,
            lambda _, rng, path: save(drawings.scene(200, rng), path, int(rng.integers(70, 90))),
            sure=False),
)


def trim(ink: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def corner(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit at 12 pixels high in a random corner of 28x28."""
    digit = resized(trim(ink), 12)
    h, w = digit.shape
    top = 1 if rng.random() < 0.5 else 27 - h
    left = 1 if rng.random() < 0.5 else 27 - w
    picture = np.zeros((28, 28), dtype=np.float32)
    picture[top:top + h, left:left + w] = digit
    return picture


def blank(rng: np.random.Generator, path: Path) -> None:
    """A white page, a black page, shaded noisy paper or a beige wall, in turn."""
    from scipy import ndimage
    kind = int(path.stem) % 4
    if kind == 0:
        save(np.full((200, 200), 255.0), path)
    elif kind == 1:
        save(np.zeros((200, 200)), path)
    elif kind == 2:  # shaded paper with noise, JPEG
        ink = np.zeros((240, 240), dtype=np.float32)
        save(photo(ink, rng), path, 80)
    else:  # a beige wall: a warm colour, a soft texture, a little noise
        texture = ndimage.gaussian_filter(rng.normal(0, 1, (240, 240)), 4)
        base = np.array([222, 205, 178]) * (1 + 0.03 * texture[..., None] / texture.std())
        save(base + rng.normal(0, 2, base.shape), path, 85)


def make_pictures(folder: Path, mnist: tuple[np.ndarray, np.ndarray] | None,
                  sample: int = 0) -> dict[str, list[tuple[Path, str]]]:
    """Every variant's pictures in folder/<k>/, with the class each shows ("" for a blank);
    with `sample`, that many of each, spread over its digits and fonts."""
    fonts = {name: drawings.font_path(file) for name, file in drawings.FONTS.items()}
    inks = [(typed(d, path), str(d)) for name, path in fonts.items() if path for d in range(10)]
    made: dict[str, list[tuple[Path, str]]] = {}
    for k, variant in enumerate(VARIANTS):
        if variant.source == "mnist" and mnist is None:
            continue
        rng = np.random.default_rng(k)
        place = folder / f"{k:02d}"
        place.mkdir(parents=True, exist_ok=True)
        made[variant.name] = []
        count = min(sample, variant.count) if sample else variant.count
        pictures = sources(variant, inks, mnist)
        stride = max(1, len(pictures) // count)
        for n, (source, label) in enumerate(pictures[::stride][:count]):
            path = place / f"{n:03d}.png"
            variant.make(source, rng, path)
            made[variant.name].append((existing(path), label))
    return made


def sources(variant: Variant, inks: list[tuple[np.ndarray, str]],
            mnist: tuple[np.ndarray, np.ndarray] | None) -> list[tuple[Any, str]]:
    """What each of a variant's pictures is drawn from, with the class it shows ("": none)."""
    if variant.source == "typed":
        return inks
    if variant.source == "mnist":
        return [(mnist[0][n] / 255.0, str(int(mnist[1][n]))) for n in range(variant.count)]
    if variant.source in ("letters", "symbols"):
        table = drawings.LETTERS if variant.source == "letters" else drawings.SYMBOLS
        return [(strokes, "") for strokes in table.values()]
    return [(None, "")] * variant.count


def median_stroke(paths: list[Path]) -> float:
    """The median stroke width at 28x28 (capsnet.digits.stroke_width of the prepared digit
    above one half) of the pictures that prepare_digit finds a digit in; 0 when none."""
    from PIL import Image
    from .digits import prepare_digit, stroke_width
    widths = []
    for path in paths:
        with Image.open(path) as image:
            digit = prepare_digit(image)
        if digit.tensor is not None:
            widths.append(stroke_width(digit.tensor[0].numpy() > 0.5))
    return round(float(np.median(widths)), 2) if widths else 0.0


def median_stroke_of_mnist(root: str, count: int = 10000) -> float | None:
    """The same of MNIST's first `count` training digits as they are; None without MNIST."""
    from .data.splits import load_split
    from .digits import stroke_width
    try:
        split = load_split("mnist", root, True, False)
    except UserError:
        return None
    images = split.images[:count, 0].numpy()
    return round(float(np.median([stroke_width(image > 127) for image in images])), 2)


def photo_seconds() -> float:
    """prepare_digit's time on a decoded 4032x3024 phone photo of a hand-drawn plus sign (a
    drawings.phone_photo enlarged to a phone camera's size), the median of three runs."""
    from PIL import Image
    from .digits import prepare_digit
    rng = np.random.default_rng(0)
    ink = drawings.sketch(drawings.SYMBOLS["plus"], 150, 6, rng)
    picture = Image.fromarray(drawings.phone_photo(ink, rng, "soft").astype(np.uint8))
    picture = picture.resize((4032, 3024), Image.BICUBIC)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        prepare_digit(picture)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def existing(path: Path) -> Path:
    """The file a save wrote (a JPEG takes the .jpg suffix)."""
    return path if path.exists() else path.with_suffix(".jpg")


def classify(paths: list[Path], tree: Path | None) -> list[dict]:
    """`python -m capsnet.predict --pretrained mnist --json` of this package, or of `tree`."""
    environment = dict(os.environ)
    if tree is not None:
        environment["PYTHONPATH"] = str(tree)
    results = []
    for start in range(0, len(paths), 2000):  # command lines of a sane length
        chunk = paths[start:start + 2000]
        done = subprocess.run([sys.executable, "-m", "capsnet.predict", "--pretrained", "mnist",
                               "--json", "--device", "cpu", *map(str, chunk)],
                              capture_output=True, text=True, env=environment,
                              cwd=str(tree) if tree else None)
        answers = [json.loads(line) for line in done.stdout.splitlines()]
        if done.returncode not in (0, 1) or len(answers) != len(chunk):
            raise UserError(f"capsnet.predict failed (exit {done.returncode}, "
                            f"{len(answers)} of {len(chunk)} answered): "
                            + (done.stderr.strip().splitlines() or ["no output"])[-1])
        results += answers
    return results


def right(result: dict, label: str) -> bool:
    prediction = result.get("prediction")
    return prediction is None if label == "" else prediction == [label]


def read_mnist(root: str) -> tuple[np.ndarray, np.ndarray] | None:
    from .data.splits import load_split
    try:
        split = load_split("mnist", root, False, False)
    except UserError:
        return None
    return split.images[:, 0].numpy().astype(np.float32), split.labels.numpy()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m capsnet.digitcheck", description=__doc__)
    parser.add_argument("--out", required=True, metavar="DIR", help="where the pictures and "
                        "the table go")
    parser.add_argument("--data-dir", metavar="ROOT", default=os.environ.get(
        DATA_DIR_ENV, "data"), help=f"dataset root holding MNIST/raw (default: "
        f"${DATA_DIR_ENV}, else data)")
    parser.add_argument("--all-mnist", action="store_true", help="also the 10,000 MNIST test "
                        "digits as PNG files")
    parser.add_argument("--package", metavar="TREE", help="classify with the capsnet of this "
                        "checkout instead (an earlier version, for the counts before)")
    args = parser.parse_args(argv)

    def work() -> None:
        out = Path(args.out)
        mnist = read_mnist(args.data_dir)
        made = make_pictures(out / "pictures", mnist)
        tree = Path(args.package).resolve() if args.package else None
        if args.all_mnist and mnist is not None:
            folder = out / "pictures" / "mnist-all"
            folder.mkdir(parents=True, exist_ok=True)
            made["MNIST, all 10,000 test digits as PNG"] = []
            for n, (ink, label) in enumerate(zip(*mnist)):
                save(ink, folder / f"{n:05d}.png")
                made["MNIST, all 10,000 test digits as PNG"].append(
                    (folder / f"{n:05d}.png", str(int(label))))
        rows = []
        for name, pictures in made.items():
            started = time.monotonic()
            results = classify([path for path, _ in pictures], tree)
            hits = sum(right(result, label) for result, (_, label) in zip(results, pictures))
            rows.append({"variant": name, "right": hits, "of": len(pictures),
                         "low_confidence": sum(bool(r.get("low_confidence")) for r in results),
                         "no_digit": sum(r.get("prediction") is None for r in results),
                         "stroke": median_stroke([path for path, _ in pictures]),
                         "seconds": round(time.monotonic() - started, 1)})
            print(f"{name}: {hits}/{len(pictures)}", flush=True)
        photo = None if tree else photo_seconds()  # this package's preparation only
        if photo is not None:
            print(f"prepare_digit on a 4032x3024 phone photo: {photo:.2f} s (median of 3)")
        record = {"package": str(tree) if tree else "this one", "rows": rows,
                  "mnist_stroke": median_stroke_of_mnist(args.data_dir),
                  "prepare_seconds_4032x3024": None if photo is None else round(photo, 3),
                  "fonts": {name: str(drawings.font_path(file) or "missing")
                            for name, file in drawings.FONTS.items()},
                  "mnist": mnist is not None, "date": time.strftime("%Y-%m-%d")}
        (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
        table = ["| pictures | right | no digit said | low confidence | stroke at 28x28 |",
                 "|---|---|---|---|---|"]
        table += [f"| {r['variant']} | {r['right']}/{r['of']} | {r['no_digit']} | "
                  f"{r['low_confidence']} | {r['stroke']:.2f} |" for r in rows]
        if record["mnist_stroke"] is not None:
            table.append(f"\nMNIST's training digits: median stroke "
                         f"{record['mnist_stroke']:.2f} pixels at 28x28")
        if photo is not None:
            table.append(f"\na 4032x3024 photo prepared in {photo:.2f} s")
        (out / "results.md").write_text("\n".join(table) + "\n")
        print(f"results in {out / 'results.md'}")
    return exit_status(work)


if __name__ == "__main__":
    exit_with(main())
