"""Pictures that hold something but no digit (a letter, a symbol, a drawing, a photo of a
scene), refused by what the capsules say of them: `python -m capsnet.digitrule (CHECKPOINT |
--pretrained NAME) [--samples N] [--data-dir ROOT]` calibrates the rule on a model's training
digits and, for a shipped model, stores it in NAME.json.

A digit capsule's pose v_j (16 numbers: how the digit is drawn) and the ten class scores
together describe a picture as the network sees it. For each class c, the training digits read
as c give a mean mu_c and a covariance S_c of z = (v_c, scores); a picture read as c is no digit
when its Mahalanobis distance (z - mu_c)^T S_c^-1 (z - mu_c) exceeds the threshold: MARGIN
times the largest distance of a training digit read right (the network has seen those, so the
test digits lie further out: at MARGIN it refuses 0.05% of MNIST's test digits read right). The
decoder's reconstruction error, the other test a capsule network offers, tells hand-drawn
letters from digits less well (docs/predict.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .cli import ArgumentParser, exit_status, exit_with
from .errors import UserError

MARGIN = 1.5  # times the largest training digit's distance: the threshold
SAMPLES = 20000  # training digits calibrated on by default
RIDGE = 1e-3  # added to each covariance's diagonal, times its mean variance


@dataclass(frozen=True)
class DigitRule:
    means: Tensor  # (classes, D): mu_c, D = pose dimensions + classes
    precisions: Tensor  # (classes, D, D): S_c^-1
    threshold: float
    about: str  # what it was calibrated on, in words

    def distances(self, scores: Tensor, poses: Tensor) -> Tensor:
        """(B,) Mahalanobis distances of each picture from the digits of its predicted class:
        scores (B, classes), poses (B, classes, pose dimensions)."""
        z, chosen = features(scores, poses)
        offset = z - self.means[chosen]  # (B, D)
        return torch.einsum("bd,bde,be->b", offset, self.precisions[chosen], offset)

    def record(self) -> dict[str, Any]:
        """For NAME.json: the threshold, and each class's mean and precision's Cholesky factor
        (its lower triangle, row by row), to 7 significant digits."""
        rows, cols = torch.tril_indices(self.means.shape[1], self.means.shape[1])
        factors = torch.linalg.cholesky(self.precisions)[:, rows, cols]
        return {"threshold": float(f"{self.threshold:.7g}"), "about": self.about,
                "means": [[float(f"{v:.7g}") for v in row] for row in self.means.tolist()],
                "precision_factors": [[float(f"{v:.7g}") for v in row]
                                      for row in factors.tolist()]}

    @staticmethod
    def of_record(record: dict[str, Any]) -> DigitRule:
        means = torch.tensor(record["means"], dtype=torch.float64)
        size = means.shape[1]
        rows, cols = torch.tril_indices(size, size)
        factors = torch.zeros(len(means), size, size, dtype=torch.float64)
        factors[:, rows, cols] = torch.tensor(record["precision_factors"], dtype=torch.float64)
        return DigitRule(means, factors @ factors.transpose(1, 2), float(record["threshold"]),
                         str(record["about"]))


def features(scores: Tensor, poses: Tensor) -> tuple[Tensor, Tensor]:
    """z = (v_c, scores) of each picture's predicted class c, (B, D) in float64, and c (B,)."""
    chosen = scores.argmax(dim=1)
    pose = poses[torch.arange(len(scores)), chosen]
    return torch.cat([pose, scores], dim=1).double(), chosen


def calibrate(scores: Tensor, poses: Tensor, labels: Tensor, about: str) -> DigitRule:
    """The rule of the training digits whose outputs are `scores` (N, classes) and `poses`
    (N, classes, pose dimensions): each class's digits read right give its mean and covariance;
    the threshold is MARGIN times the largest of their distances."""
    z, chosen = features(scores, poses)
    right = chosen == labels
    classes, size = scores.shape[1], z.shape[1]
    means = torch.zeros(classes, size, dtype=torch.float64)
    precisions = torch.zeros(classes, size, size, dtype=torch.float64)
    for c in range(classes):
        own = z[right & (chosen == c)]
        if len(own) <= size:
            raise UserError(f"it needs more than {size} training digits read right as class "
                            f"{c} to be calibrated, and {len(own)} were")
        means[c] = own.mean(dim=0)
        covariance = torch.cov(own.T)
        covariance += RIDGE * covariance.diagonal().mean() * torch.eye(size, dtype=torch.float64)
        precisions[c] = torch.linalg.inv(covariance)
    rule = DigitRule(means, precisions, 0.0, about)
    distances = rule.distances(scores, poses)[right]
    threshold = MARGIN * float(distances.max())
    return DigitRule(means, precisions, threshold, about)


def outputs(model: torch.nn.Module, images: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
    """The model's scores and poses for (N, C, H, W) images, on the CPU."""
    device = next(model.parameters()).device
    scores, poses = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            output = model(images[start:start + batch].to(device))
            scores.append(output.scores.float().cpu())
            poses.append(output.poses.float().cpu())
    return torch.cat(scores), torch.cat(poses)


def training_digits(config: dict[str, Any], data_dir: str, samples: int,
                    side: int) -> tuple[Tensor, Tensor]:
    """The first `samples` training digits of a checkpoint's dataset, prepared as
    capsnet.predict prepares a picture (capsnet.digits), with their labels; UserError when
    the data is not at data_dir."""
    import numpy as np
    from .data.splits import load_split
    from .digits import prepare_digit
    split = load_split(config["dataset"], data_dir, True, False)
    images, labels = [], []
    for image, label in zip(split.images[:samples], split.labels[:samples]):
        digit = prepare_digit(image[0].numpy().astype(np.float32) / 255, "no", side)
        if digit.tensor is not None:
            images.append(digit.tensor)
            labels.append(int(label))
    return torch.stack(images), torch.tensor(labels)


def rule_for(checkpoint: dict[str, Any], model: torch.nn.Module, data_dir: str | None,
             record: dict[str, Any] | None, samples: int = 2000) -> tuple[DigitRule | None, str]:
    """The no-digit rule for a digit model: the one stored in its record (a shipped model's
    NAME.json), else one calibrated on `samples` of its training digits at data_dir, else none;
    and a line that says which."""
    if record and "no_digit_rule" in record:
        rule = DigitRule.of_record(record["no_digit_rule"])
        return rule, f"no-digit rule: the one shipped with the model ({rule.about})"
    config = checkpoint["config"]
    if config.get("model", "capsnet") != "capsnet":
        return None, "no-digit rule off: it needs a capsule network's poses"
    root = data_dir or config.get("data_dir", "data")
    started = time.monotonic()
    try:
        images, labels = training_digits(config, root, samples,
                                         checkpoint["model_args"]["image_size"])
    except UserError:
        return None, (f"no-digit rule off: the checkpoint has none, and its training digits "
                      f"are not under {root} (--data-dir) to calibrate one")
    scores, poses = outputs(model, images)
    try:
        rule = calibrate(scores, poses, labels, f"{len(images)} training digits of {root}")
    except UserError as error:
        return None, f"no-digit rule off: {error}"
    return rule, (f"no-digit rule: calibrated on {len(images)} training digits of {root} "
                  f"({time.monotonic() - started:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    import json
    import os
    import re
    from .cli import DATA_DIR_ENV
    parser = ArgumentParser(prog="python -m capsnet.digitrule", description=__doc__)
    parser.add_argument("checkpoint", nargs="?", help="a last.pt or best.pt (or --pretrained)")
    parser.add_argument("--pretrained", metavar="NAME", help="a model shipped in the package: "
                        "its rule is written into NAME.json")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="training digits to "
                        "calibrate on (default: %(default)s)")
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV, "data"),
                        help=f"dataset root (default: ${DATA_DIR_ENV}, else data)")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.pretrained is None):
        parser.error("give a checkpoint or --pretrained NAME")
    if args.samples < 1000:
        parser.error(f"--samples must be at least 1000 (got {args.samples})")

    def work() -> None:
        from .run.storage import load_checkpoint, write_file
        from .weights import FOLDER, model_of, path_of
        checkpoint = load_checkpoint(path_of(args.pretrained) if args.pretrained
                                     else args.checkpoint, weights=True)
        model = model_of(checkpoint, torch.device("cpu"))
        print(f"preparing {args.samples} training digits of {args.data_dir} ...", flush=True)
        images, labels = training_digits(checkpoint["config"], args.data_dir, args.samples,
                                         checkpoint["model_args"]["image_size"])
        scores, poses = outputs(model, images)
        rule = calibrate(scores, poses, labels,
                         f"{len(images)} training digits of {checkpoint['config']['dataset']}")
        print(f"threshold {rule.threshold:.2f}: {rule.about}")
        if args.pretrained:
            path = FOLDER / f"{args.pretrained}.json"
            record = json.loads(path.read_text())
            record["no_digit_rule"] = rule.record()
            text = re.sub(r"\[\s*\n\s*([-+0-9.eE,\s]*?)\s*\]",  # a row of numbers on a line
                          lambda rows: "[" + re.sub(r"\s+", " ", rows.group(1)) + "]",
                          json.dumps(record, indent=2))
            write_file(path, (text + "\n").encode())
            print(f"written into {path}")
    return exit_status(work)


if __name__ == "__main__":
    exit_with(main())
