"""Classify your own images with a checkpoint, or with a model shipped in the package:
`python -m capsnet.predict (CHECKPOINT | --pretrained NAME) IMAGE... [--json] [--out DIR]
[--invert auto|yes|no]`.

Each image (PNG, JPEG, ...; grey or colour; transparent or not) is made what the checkpoint's
dataset gives its model:
- a digit model's (MNIST, mnist40, MultiMNIST, affNIST): every picture, 28x28 included, made a
  digit as MNIST's were by capsnet.digits (the ink told from the paper and its shading, its
  bounding box fitted into a 20x20 box keeping its aspect ratio and centred by its centre of mass
  in 28x28), or said to hold no digit (by the preparation, or for an MNIST model by
  capsnet.digitrule: a gate that has learnt digits against letters, symbols and shapes); for
  canvas datasets (mnist40, MultiMNIST) that digit in the middle of the canvas;
- any other model's: its channels (grey, colour; a two-channel stereo model gets the grey image
  in both, with a warning), white ink on black for grey data (--invert auto inverts an image whose
  border is bright), clothing (Fashion-MNIST) of another size trimmed and its longest edge resized
  to 28, other datasets' images resized (and centre-cropped to a crop size, as at test).
It prints the prediction (two classes for MultiMNIST), the scores of the top classes (capsule
lengths, or the baseline's probabilities; "low confidence" below 0.5) and what was done to the
image; --out writes the input beside its reconstruction. An image that cannot be read gets one
line, and the others are still classified. Exit status: 2 if an image could not be read, else 1
if any held no digit, else 0.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cli import ArgumentParser, exit_status, exit_with
from .errors import UserError

TOP = 3  # classes shown per image
# A top score (capsule length, or the baseline's probability) below this is said to be of low
# confidence (docs/predict.md): the margin loss trains the right class's length above 0.9 and
# the others' below 0.1, so below one half the model is not sure of any class.
LOW_CONFIDENCE = 0.5
BRIGHT = 0.5  # mean border brightness above which --invert auto inverts a grey image
DIGIT = 28  # side of a digit placed on a canvas


@dataclass
class Prepared:
    tensor: torch.Tensor | None  # (C, H, W) float in [0, 1], as the model takes it; None: no digit
    done: list[str]  # what was done to the image, in words
    no_digit: str = ""  # why no digit was found in a digit model's image


def prepare(path: Path, channels: int, side: int, size: int, canvas: int,
            invert: str, fit: str = "") -> Prepared:
    """The image at `path` as the model's input: `side` the dataset's image side, `size` the
    model's input side (a centre crop of side when smaller), `canvas` > 0 for canvas datasets,
    `fit` the dataset's rule for its images ("digit": capsnet.digits; FITS for an image of
    another size; "": resized)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise UserError(f"{path} is not a readable image ({type(error).__name__})") from None
    if fit == "digit" and channels == 1:
        from .digits import prepare_digit
        digit = prepare_digit(image, invert, DIGIT if canvas else side)
        if digit.tensor is None:
            return Prepared(None, digit.done, digit.no_digit)
        return placed(digit.tensor, digit.done, canvas)
    return resized(image, channels, side, size, canvas, invert, fit)


def placed(tensor: torch.Tensor, done: list[str], canvas: int) -> Prepared:
    """A 28x28 digit as the model takes it: in the middle of a canvas dataset's canvas."""
    if canvas:
        on_canvas = torch.zeros(tensor.shape[0], canvas, canvas)
        at = (canvas - DIGIT) // 2
        on_canvas[:, at:at + DIGIT, at:at + DIGIT] = tensor
        return Prepared(on_canvas, done + [f"placed in the middle of the {canvas}x{canvas} "
                                           "canvas"])
    return Prepared(tensor, done)


def resized(image: Any, channels: int, side: int, size: int, canvas: int, invert: str,
            fit: str) -> Prepared:
    """Any other model's input: the picture's channels, inverted for grey data with a bright
    border, fitted (FITS) or resized to the dataset's side, centre-cropped to the model's."""
    import numpy as np
    from PIL import Image
    from .data.folder import on_white
    original = f"{image.width}x{image.height} {image.mode}"
    image, flattened = on_white(image)
    grey = image.convert("L")
    colour = image.convert("RGB")
    done = [f"read {original}"] + (["its transparent parts made white"] if flattened else [])
    picture = colour if channels == 3 else grey
    if channels != 3 and colour.getextrema() != grey.convert("RGB").getextrema():
        done.append("made grey")
    target = DIGIT if canvas else side
    fitting = FITS.get(fit) if picture.size != (target, target) and channels == 1 else None
    if picture.size != (target, target) and fitting is None:
        picture = picture.resize((target, target), Image.BILINEAR)
        done.append(f"resized to {target}x{target}")
    array = np.asarray(picture, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    tensor = torch.from_numpy(array.copy())
    if channels != 3:
        border = torch.cat([tensor[:, 0], tensor[:, -1], tensor[:, :, 0], tensor[:, :, -1]], 1)
        bright = float(border.mean()) > BRIGHT
        if invert == "yes" or (invert == "auto" and bright):
            tensor = 1.0 - tensor
            done.append("inverted (dark ink on a bright ground)" if invert == "auto"
                        else "inverted")
    if fitting is not None:
        tensor, how = fitting(tensor[0], target)
        tensor = tensor[None]
        done.append(how)
    if canvas:
        return placed(tensor, done, canvas)
    if size < side:
        at = (side - size) // 2
        tensor = tensor[:, at:at + size, at:at + size]
        done.append(f"centre-cropped to {size}x{size}")
    if channels == 2:
        tensor = tensor.expand(2, -1, -1).clone()
        done.append("the grey image in both channels of the stereo pair (warning: the model "
                    "was trained on two views)")
    return Prepared(tensor, done)


INK = 0.25  # of the brightest pixel: what counts as the object when trimming the ground


def trimmed(image: torch.Tensor) -> torch.Tensor | None:
    """The bounding box of the object (white on black, (H, W)); None when there is none."""
    rows = (image > INK * image.max()).any(dim=1).nonzero()
    cols = (image > INK * image.max()).any(dim=0).nonzero()
    if float(image.max()) <= 0 or not len(rows):
        return None
    return image[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]


def scaled(image: torch.Tensor, longest: int) -> torch.Tensor:
    """(H, W) resized, keeping its aspect ratio, so that its longer side is `longest`."""
    import torch.nn.functional as F
    h, w = image.shape
    shape = (max(1, round(h * longest / max(h, w))), max(1, round(w * longest / max(h, w))))
    return F.interpolate(image[None, None], size=shape, mode="bilinear", antialias=True,
                         align_corners=False)[0, 0].clamp(0, 1)


def fit_fashion(image: torch.Tensor, side: int) -> tuple[torch.Tensor, str]:
    """As Fashion-MNIST's images were made: the ground trimmed, the longest edge resized to
    side, centred."""
    box = trimmed(image)
    item = scaled(box if box is not None else image, side)
    h, w = item.shape
    out = torch.zeros(side, side)
    out[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = item
    return out, (f"its ground trimmed, its longest edge resized to {side} and centred in "
                 f"{side}x{side}, as Fashion-MNIST's were")


# capsnet.data.datasets.Dataset.fit -> how an image of another size is made that dataset's form
# (a digit dataset's grey images: capsnet.digits, whatever their size)
FITS = {"fashion": fit_fashion}


def describe(scores: torch.Tensor, classes: list[str], objects: int, model: str
             ) -> dict[str, Any]:
    from .model import predict
    top = scores.argsort(descending=True, stable=True)[:TOP].tolist()
    chosen = predict(scores[None], objects)[0]
    chosen = [int(chosen)] if objects == 1 else [int(k) for k in chosen]
    return {"prediction": [classes[k] for k in chosen],
            "score": "probability" if model == "baseline" else "capsule length",
            "top": [{"class": classes[k], "score": round(float(scores[k]), 4)} for k in top],
            **({"low_confidence": True} if float(scores[top[0]]) < LOW_CONFIDENCE else {})}


def main(argv: list[str] | None = None) -> int:
    from .config import DEVICES
    from .weights import names
    parser = ArgumentParser(prog="python -m capsnet.predict", description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="FILE",
                        help="a last.pt or best.pt (not with --pretrained), then one image or "
                        "more")
    parser.add_argument("--pretrained", metavar="NAME", help="a model shipped in the package "
                        "(capsnet/weights/) instead of a checkpoint: " + ", ".join(names()))
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--out", metavar="DIR", help="write each input beside its reconstruction")
    parser.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                        help="grey images: make dark ink on a bright ground white on black "
                        "(auto: when the border is bright; default: %(default)s)")
    parser.add_argument("--no-digit-rule", choices=("on", "off"), default="on",
                        help="an MNIST model's pictures pass the package's no-digit rule "
                        "(capsnet.digitrule), or only the preparation's (default: %(default)s)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where the model runs: auto picks cuda when there is a GPU "
                        "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.pretrained is None and len(args.paths) < 2:
        parser.error("give a checkpoint and at least one image, or --pretrained NAME and images")
    images = args.paths if args.pretrained else args.paths[1:]
    failed: list[str] = []
    no_digit: list[str] = []

    def work() -> None:
        from .cli import resolve_device
        from .run.storage import load_checkpoint
        from .data.datasets import DATASETS
        from .weights import model_of, path_of
        checkpoint = load_checkpoint(path_of(args.pretrained) if args.pretrained
                                     else args.paths[0], weights=True)
        config, model_args = checkpoint["config"], checkpoint["model_args"]
        device = resolve_device(args.device)
        model = model_of(checkpoint, device)
        entry = DATASETS[config["dataset"]]
        channels, size = model_args["in_channels"], model_args["image_size"]
        side = entry.shape[-1] if entry.shape else config.get("image_size", size)
        classes, objects = list(checkpoint["classes"]), entry.objects
        rule = None
        if entry.fit == "digit" and objects == 1 and not entry.canvas:
            from .digitrule import rule_for
            rule, said = (rule_for(config["dataset"]) if args.no_digit_rule == "on"
                          else (None, "no-digit rule off (--no-digit-rule off)"))
            print(said, file=sys.stderr, flush=True)

        def refuse(image: str, why: str, done: list[str]) -> None:
            """A picture with no digit: its line (or JSON, "prediction": null)."""
            no_digit.append(image)
            result = {"image": image, "prediction": None, "no_digit": why, "done": done}
            print(json.dumps(result) if args.json else text(result), flush=True)
        for image in images:
            try:
                prepared = prepare(Path(image), channels, side, size, entry.canvas, args.invert,
                                   entry.fit)
            except UserError as error:
                failed.append(image)
                print(f"error: {error}", file=sys.stderr)
                continue
            if prepared.tensor is None:
                refuse(image, prepared.no_digit, prepared.done)
                continue
            if rule is not None:
                like = float(rule.scores(prepared.tensor[None])[0])
                if like < rule.threshold:
                    refuse(image, f"it is not like a digit: the no-digit rule scores it "
                           f"{like:.1f}, and digits above {rule.threshold:.1f}", prepared.done)
                    continue
            with torch.inference_mode():
                output = model(prepared.tensor[None].to(device), None, objects)
            scores = output.scores.float().cpu()
            result = {"image": image, **describe(scores[0], classes, objects,
                                                 config.get("model", "capsnet")),
                      "done": prepared.done}
            if args.out and output.reconstructions is not None:
                result["reconstruction"] = str(write_pair(Path(args.out), Path(image),
                                                          prepared.tensor,
                                                          output.reconstructions[0]))
            print(json.dumps(result) if args.json else text(result), flush=True)
        if failed:
            raise UserError(f"{len(failed)} of {len(images)} images could not be "
                            "classified (see above)")
    status = exit_status(work)
    return status or (1 if no_digit else 0)  # 2: unreadable; 1: an image without a digit


def text(result: dict[str, Any]) -> str:
    if result["prediction"] is None:
        return (f"{result['image']}: no digit found ({result['no_digit']}); "
                f"{', '.join(result['done'])}")
    scores = ", ".join(f"{t['class']} {t['score']:.3f}" for t in result["top"])
    low = ", low confidence" if result.get("low_confidence") else ""
    line = (f"{result['image']}: {' and '.join(result['prediction'])} ({result['score']}s: "
            f"{scores}{low}); {', '.join(result['done'])}")
    if "reconstruction" in result:
        line += f"; reconstruction in {result['reconstruction']}"
    return line


def write_pair(folder: Path, image: Path, tensor: torch.Tensor, rebuilt: torch.Tensor) -> Path:
    """The model's input beside its reconstruction (two digits: drawn on one in two colours)."""
    import io
    import numpy as np
    from PIL import Image
    from .run.storage import make_dir, write_file
    if rebuilt.dim() == 4:  # (K, C, H, W): MultiMNIST's two digits
        from .dashboard.figures import overlay
        rebuilt = overlay(rebuilt[None].float().cpu())[0]
    shown = [tensor.float().cpu(), rebuilt.float().cpu()]
    if shown[1].shape[0] == 3 and shown[0].shape[0] != 3:
        shown[0] = shown[0][:1].expand(3, -1, -1)
    if shown[0].shape[0] == 2:  # a stereo pair: its first view
        shown = [part[:1] for part in shown]
    pair = torch.cat(shown, dim=2).clamp(0, 1)  # side by side
    array = (pair.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    picture = picture.resize((picture.width * 4, picture.height * 4), Image.NEAREST)
    make_dir(folder)
    path = folder / f"{image.stem}-reconstruction.png"
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    write_file(path, buffer.getvalue())
    return path


if __name__ == "__main__":
    exit_with(main())
