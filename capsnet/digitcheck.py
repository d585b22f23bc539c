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
from typing import Callable

import numpy as np

from .cli import DATA_DIR_ENV, ArgumentParser, exit_status
from .errors import UserError

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
        picture.save(path)


def transparent(ink: np.ndarray, colour: tuple[int, int, int], path: Path) -> None:
    from PIL import Image
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = (ink * 255).round().astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)


@dataclass(frozen=True)
class Variant:
    name: str
    source: str  # "typed", "mnist" or "blank"
    count: int  # pictures at most (MNIST: digits taken)
    make: Callable[[np.ndarray, np.random.Generator, Path], None]  # (ink, rng, path) -> a file
    clean: bool = False  # a picture as clean as the model's data


def page_200(ink, rng, path):
    save(255 * (1 - on_page(ink, 200, rng, 120)), path)


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
    Variant("blank: white page, black page, shaded paper, a beige wall", "blank", 40, None),
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


def blank(k: int, rng: np.random.Generator, path: Path) -> None:
    from scipy import ndimage
    kind = k % 4
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
    fonts = {name: font_path(file) for name, file in FONTS.items()}
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
        if variant.source == "blank":
            for n in range(count):
                path = place / f"{n:03d}.png"
                blank(n, rng, path)
                made[variant.name].append((existing(path), ""))
            continue
        pictures = (inks if variant.source == "typed" else
                    [(mnist[0][n] / 255.0, str(int(mnist[1][n]))) for n in range(variant.count)])
        stride = max(1, len(pictures) // count)
        for n, (ink, label) in enumerate(pictures[::stride][:count]):
            path = place / f"{n:03d}.png"
            variant.make(ink, rng, path)
            made[variant.name].append((existing(path), label))
    return made


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
        done = subprocess.run([sys.executable, "-m", "capsnet.predict", "--pretrained", "mnist",
                               "--json", "--device", "cpu",
                               *map(str, paths[start:start + 2000])],
                              capture_output=True, text=True, env=environment,
                              cwd=str(tree) if tree else None)
        if done.returncode not in (0, 1):
            raise UserError(f"capsnet.predict failed (exit {done.returncode}): "
                            + (done.stderr.strip().splitlines() or ["no output"])[-1])
        results += [json.loads(line) for line in done.stdout.splitlines()]
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
                         "seconds": round(time.monotonic() - started, 1)})
            print(f"{name}: {hits}/{len(pictures)}", flush=True)
        record = {"package": str(tree) if tree else "this one", "rows": rows,
                  "fonts": {name: str(font_path(file) or "missing")
                            for name, file in FONTS.items()},
                  "mnist": mnist is not None, "date": time.strftime("%Y-%m-%d")}
        (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
        table = ["| pictures | right | no digit said | low confidence |", "|---|---|---|---|"]
        table += [f"| {r['variant']} | {r['right']}/{r['of']} | {r['no_digit']} | "
                  f"{r['low_confidence']} |" for r in rows]
        (out / "results.md").write_text("\n".join(table) + "\n")
        print(f"results in {out / 'results.md'}")
    return exit_status(work)


if __name__ == "__main__":
    sys.exit(main())
