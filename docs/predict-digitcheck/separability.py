"""How far the shipped model's capsules tell hand-drawn letters, symbols and colour scenes from
digits, and how far the no-digit rule's gates do (docs/predict.md, "Letters, symbols and
scenes"): `python docs/predict-digitcheck/separability.py`
with CAPSNET_DATA_DIR at MNIST. New pictures (seed 1234, not digitcheck's): 3 of each letter and
symbol, 40 scenes at 32x32 and at 200x200. For three feature sets z, each class's training
digits read right (10,000, prepared as predict prepares a picture) give a mean and covariance;
a picture's Mahalanobis distance from its predicted class is thresholded where it refuses 5 or
10 of the test digits read right, or at 1.0 and 1.5 times the training digits' largest. Then
the package's no-digit rule (capsnet.digitrule) on the same pictures and test digits."""
import os
from pathlib import Path

import numpy as np
import torch

import capsnet
from capsnet import digitcheck, drawings
from capsnet.data.idx import read_idx
from capsnet.digits import prepare_digit
from capsnet.digitrule import DigitRule
from capsnet.predict import prepare
from capsnet.weights import FOLDER as FOLDER_OF_WEIGHTS, record_of

FOLDER = Path("/tmp/separability")
RIDGE = 1e-3  # added to each covariance's diagonal, times its mean variance
RAW = Path(os.environ["CAPSNET_DATA_DIR"]) / "MNIST" / "raw"


def pictures(rng: np.random.Generator) -> dict[str, tuple[int, torch.Tensor]]:
    """Each group's number of pictures and the 28x28 digits predict made of those it kept."""
    FOLDER.mkdir(exist_ok=True)
    paths: dict[str, list[Path]] = {"letters": [], "symbols": [], "scenes 32": [],
                                    "scenes 200": []}
    sketch = digitcheck.sketched((110, 180), (0.04, 0.08))
    for group, table in (("letters", drawings.LETTERS), ("symbols", drawings.SYMBOLS)):
        for n in range(3):
            for name, strokes in table.items():
                paths[group].append(FOLDER / f"{group}-{name}-{n}.png")
                sketch(strokes, rng, paths[group][-1])
    for side in (32, 200):
        for n in range(40):
            paths[f"scenes {side}"].append(FOLDER / f"scene{side}-{n}.png")
            digitcheck.save(drawings.scene(side, rng), paths[f"scenes {side}"][-1],
                            80 if side == 200 else 0)
    made = {}
    for group, files in paths.items():
        kept = [prepare(digitcheck.existing(p), 1, 28, 28, 0, "auto", "digit").tensor
                for p in files]
        kept = [t for t in kept if t is not None]
        made[group] = (len(files), torch.stack(kept) if kept else torch.zeros(0, 1, 28, 28))
    return made


def capsule_outputs(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's scores (N, 10) and poses (N, 10, 16)."""
    scores, poses = [], []
    with torch.inference_mode():
        for start in range(0, len(images), 500):
            output = model(images[start:start + 500])
            scores.append(output.scores.float())
            poses.append(output.poses.float())
    return torch.cat(scores), torch.cat(poses)


def digits(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(RAW / f"{split}-images-idx3-ubyte", 3)[:count]
    labels = read_idx(RAW / f"{split}-labels-idx1-ubyte", 1)[:count]
    kept = [(prepare_digit(i.astype(np.float32) / 255, "no", 28).tensor, int(l))
            for i, l in zip(images, labels)]
    kept = [(t, l) for t, l in kept if t is not None]
    return torch.stack([t for t, _ in kept]), torch.tensor([l for _, l in kept])


def features(kind: str, scores: torch.Tensor, poses: torch.Tensor):
    chosen = scores.argmax(1)
    rows = torch.arange(len(scores))
    if kind == "pose of the class read, scores (the 3fe492b rule's)":
        z = torch.cat([poses[rows, chosen], scores], 1)
    elif kind == "every class's pose, scores":
        z = torch.cat([poses.flatten(1), scores], 1)
    else:  # the poses of the two classes scored highest, scores
        second = scores.clone()
        second[rows, chosen] = -1
        z = torch.cat([poses[rows, chosen], poses[rows, second.argmax(1)], scores], 1)
    return z.double(), chosen


def main() -> None:
    model = capsnet.pretrained("mnist")
    groups = pictures(np.random.default_rng(1234))
    train_x, train_y = digits("train", 10000)
    test_x, test_y = digits("t10k", 10000)
    train, test = capsule_outputs(model, train_x), capsule_outputs(model, test_x)
    outputs = {group: (total, len(x), capsule_outputs(model, x))
               for group, (total, x) in groups.items()}
    rule = DigitRule.load(FOLDER_OF_WEIGHTS / record_of("mnist")["no_digit_rule"]["file"])
    right = test[0].argmax(1) == test_y
    print(f"the no-digit rule (threshold {rule.threshold:.3f}): test digits read right refused "
          f"{int((rule.scores(test_x)[right] < rule.threshold).sum())}; " + ", ".join(
              f"{g} {total - kept + int((rule.scores(x) < rule.threshold).sum())}/{total}"
              for g, (total, x) in groups.items() for kept in [len(x)]))
    for kind in ("pose of the class read, scores (the 3fe492b rule's)",
                 "every class's pose, scores", "the two highest classes' poses, scores"):
        z, chosen = features(kind, *train)
        right = chosen == train_y
        size = z.shape[1]
        means = torch.zeros(10, size, dtype=torch.float64)
        precisions = torch.zeros(10, size, size, dtype=torch.float64)
        for c in range(10):
            own = z[right & (chosen == c)]
            means[c] = own.mean(0)
            covariance = torch.cov(own.T)
            covariance += RIDGE * covariance.diagonal().mean() * torch.eye(
                size, dtype=torch.float64)
            precisions[c] = torch.linalg.inv(covariance)

        def distance(scores, poses):
            z, chosen = features(kind, scores, poses)
            offset = z - means[chosen]
            return torch.einsum("bd,bde,be->b", offset, precisions[chosen], offset)
        largest = float(distance(*train)[right].max())
        test_right = distance(*test)[test[0].argmax(1) == test_y].sort().values
        print(f"{kind} ({size} numbers)")
        for label, threshold in (("5 test digits refused", test_right[-6]),
                                 ("10 test digits refused", test_right[-11]),
                                 ("1.0 x the training maximum", largest),
                                 ("1.5 x the training maximum", 1.5 * largest)):
            refused = {group: total - kept + int((distance(*x) > threshold).sum())
                       for group, (total, kept, x) in outputs.items()}
            print(f"  {label}: test digits read right refused "
                  f"{int((test_right > threshold).sum())}; "
                  + ", ".join(f"{g} {r}/{outputs[g][0]}" for g, r in refused.items()))


if __name__ == "__main__":
    main()
