"""What the capsules learned: the paper's figures from a checkpoint.

python -m capsnet.analyze (CHECKPOINT | --pretrained NAME) [--out DIR] [--per-class N]
                          [--device ...] [--data-dir ...]

Runs the checkpoint on its test set and writes PNG figures and an index.html that shows them,
into DIR (default: figures/ beside the checkpoint; figures/NAME for --pretrained NAME). The grids
here (by_mask, perturbed, routing_maps) are also what the dashboard shows live.
"""
from __future__ import annotations

import contextlib
import functools
import html
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm import tqdm

from .errors import UserError
from .meters import hits
from .dashboard.figures import (ROUTED, STEPS, by_mask, first_per_class, overlay, perturbed,
    routing_maps)
from .model import CapsNet

MISTAKES = 32
PAIRS = 16  # MultiMNIST test images drawn with their two reconstructions


@dataclass
class Predictions:
    """The test set's images, labels and capsules, on the CPU. Labels are (N,), or (N, K) for
    K digits per image (MultiMNIST)."""
    images: Tensor  # (N, C, H, W)
    labels: Tensor  # (N,) or (N, K)
    scores: Tensor  # (N, classes): the class scores (CapsNetOutput.scores)

    @functools.cached_property
    def hits(self) -> tuple[Tensor, Tensor]:
        """Which labels are predicted, (N, K), and the prediction in each label's slot."""
        return hits(self.scores, self.labels)

    @property
    def predicted(self) -> Tensor:
        """The predicted class (N,), or classes in the labels' slots (N, K)."""
        predicted = self.hits[1]
        return predicted if self.labels.dim() == 2 else predicted[:, 0]

    @property
    def right(self) -> Tensor:
        """(N,) whether every label of the example is predicted."""
        return self.hits[0].all(dim=1)

    @property
    def first(self) -> Tensor:
        """(N,) each example's first (for K digits: lowest) label, to pick examples by class."""
        return self.labels if self.labels.dim() == 1 else self.labels[:, 0]


@torch.no_grad()
def predict(model: CapsNet, batches: Any) -> Predictions:
    images, labels, scores = [], [], []
    for sample in tqdm(batches, desc="test set", unit="batch", leave=False):
        sample = sample.real()
        images.append(sample.images.cpu())
        labels.append(sample.labels.cpu())
        scores.append(model(sample.images).scores.float().cpu())
    return Predictions(torch.cat(images), torch.cat(labels), torch.cat(scores))


@dataclass
class Context:
    """What every figure is drawn from."""
    model: CapsNet
    pred: Predictions
    classes: tuple[str, ...]
    per_class: int
    device: torch.device


# Figures, drawn with matplotlib.

def tiled(grid: Tensor) -> Any:
    """(rows, columns, C, H, W) -> one (rows*H, columns*W[, C]) array for imshow, with a
    one-pixel grey line between images."""
    rows, columns, channels, height, width = grid.shape
    canvas = torch.full((channels, rows * (height + 1), columns * (width + 1)), 0.5)
    for r in range(rows):
        for c in range(columns):
            canvas[:, r * (height + 1):r * (height + 1) + height,
                   c * (width + 1):c * (width + 1) + width] = grid[r, c].float().cpu()
    array = canvas.permute(1, 2, 0).clamp(0, 1).numpy()
    return array[..., 0] if channels == 1 else array


def image_axes(ax: Any, grid: Tensor, column_names: list[str], row_names: list[str]) -> None:
    rows, columns, _, height, width = grid.shape
    ax.imshow(tiled(grid), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([c * (width + 1) + width / 2 for c in range(columns)], column_names,
                  fontsize=7)
    ax.set_yticks([r * (height + 1) + height / 2 for r in range(rows)], row_names, fontsize=7)
    ax.tick_params(length=0)


def figure_by_mask(ctx: Context) -> Any:
    import matplotlib.pyplot as plt
    model, pred, classes, n, device = ctx.model, ctx.pred, ctx.classes, ctx.per_class, ctx.device
    index = first_per_class(pred.first, len(classes), n)
    grid = by_mask(model, pred.images[index].to(device))
    true = pred.labels[index].view(len(index), -1).tolist()  # (rows, K) true classes
    fig, ax = plt.subplots(figsize=(1 + 0.6 * grid.shape[1], 1 + 0.6 * grid.shape[0]))
    image_axes(ax, grid, ["input"] + [f"mask {c}" for c in classes],
               ["true " + "+".join(classes[k] for k in labels) for labels in true])
    for row, labels in enumerate(true):  # mark the true classes' columns
        for label in labels:
            h, w = grid.shape[-2:]
            ax.add_patch(plt.Rectangle(((1 + label) * (w + 1) - 1, row * (h + 1) - 1), w + 1,
                                       h + 1, fill=False, edgecolor="red", linewidth=1))
    ax.set_title("Reconstruction from each class's capsule (red: the true class)")
    return fig


def figure_perturbation(ctx: Context) -> Any:
    import matplotlib.pyplot as plt
    model, pred, classes, device = ctx.model, ctx.pred, ctx.classes, ctx.device
    index = first_per_class(pred.first, len(classes), 1).tolist()
    columns = min(5, len(index))
    rows = -(-len(index) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 4.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, index):
        grid, predicted = perturbed(model, pred.images[k].to(device))
        ax.axis("on")
        image_axes(ax, grid, [f"{s:+.2f}" if i % 5 == 0 else "" for i, s in enumerate(STEPS.tolist())],
                   [f"dim {d}" for d in range(grid.shape[0])])
        ax.set_title(f"true {names_of(pred.labels[k], classes)}, capsule {classes[predicted]}",
                     fontsize=9)
    fig.suptitle("Each dimension of the predicted capsule tweaked by -0.25 ... +0.25 "
                 "(middle column: unchanged)")
    return fig


def mistakes(pred: Predictions) -> Tensor:
    """Indices of the wrong predictions, the most confident (longest capsule) first."""
    wrong = (~pred.right).nonzero().flatten()
    confidence = pred.scores[wrong].max(dim=1).values
    return wrong[confidence.argsort(descending=True)][:MISTAKES]


def figure_mistakes(ctx: Context) -> Any:
    import matplotlib.pyplot as plt
    model, pred, classes, device = ctx.model, ctx.pred, ctx.classes, ctx.device
    index = mistakes(pred)
    if len(index) == 0:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "No test image is misclassified.", ha="center", va="center")
        return fig
    images = pred.images[index].to(device)
    predicted, labels = pred.predicted[index], pred.labels[index]
    with torch.no_grad():
        poses = model(images).poses
        rebuilt = [model.reconstruct(poses, classes_.to(device)) for classes_ in (predicted, labels)]
    if labels.dim() == 2:  # two digits: both reconstructions on one image, in two colours
        images, rebuilt = images.expand(-1, 3, -1, -1), [overlay(r) for r in rebuilt]
    grid = torch.stack([images, *rebuilt], dim=1)
    scores = pred.scores[index]
    names = [f"{names_of(p, classes, scores[i])} / true {names_of(t, classes, scores[i])}"
             for i, (p, t) in enumerate(zip(predicted, labels))]
    fig, ax = plt.subplots(figsize=(6, 0.55 * len(index) + 1))
    image_axes(ax, grid, ["input", "as\npredicted", "as true\nclass"], names)
    ax.set_title("Most confident mistakes\n(predicted class and capsule length / true class)",
                 fontsize=9)
    return fig


def names_of(labels: Tensor, classes: tuple[str, ...], scores: Tensor | None = None) -> str:
    """One example's class or classes in words ("7", "3+7"), with their scores."""
    return "+".join(classes[k] + ("" if scores is None else f" {scores[k]:.2f}")
                    for k in labels.view(-1).tolist())


def confusion(pred: Predictions, classes: int) -> Tensor:
    """(classes, classes) counts, rows: true class (each digit of an example counted alone,
    against the prediction in its slot)."""
    flat = pred.labels.flatten() * classes + pred.predicted.flatten()
    return torch.bincount(flat, minlength=classes * classes).view(classes, classes)


def figure_accuracy(ctx: Context) -> Any:
    import matplotlib.pyplot as plt
    pred, classes = ctx.pred, ctx.classes
    matrix = confusion(pred, len(classes)).float()
    per_class = 100 * matrix.diag() / matrix.sum(dim=1).clamp_min(1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    left.bar(range(len(classes)), per_class.numpy())
    left.set_xticks(range(len(classes)), classes, rotation=45 if max(map(len, classes)) > 2 else 0)
    left.set_ylim(max(0.0, float(per_class.min()) - 5), 100)
    left.set_xlabel("class")
    left.set_ylabel("test accuracy (%)")
    left.set_title(f"Per-class accuracy (all: {100 * matrix.diag().sum() / matrix.sum():.2f}%)")
    right.imshow(matrix.log1p().numpy(), cmap="Blues")
    for (t, p), count in zip(torch.cartesian_prod(torch.arange(len(classes)),
                                                  torch.arange(len(classes))).tolist(),
                             matrix.flatten().long().tolist()):
        right.text(p, t, str(count), ha="center", va="center", fontsize=7)
    right.set_xticks(range(len(classes)), classes, rotation=45 if max(map(len, classes)) > 2 else 0)
    right.set_yticks(range(len(classes)), classes)
    right.set_xlabel("predicted class")
    right.set_ylabel("true class")
    right.set_title("Confusion matrix")
    fig.tight_layout()
    return fig


def figure_routing(ctx: Context) -> Any:
    import matplotlib.pyplot as plt
    model, pred, classes, device = ctx.model, ctx.pred, ctx.classes, ctx.device
    index = first_per_class(pred.first, len(classes), 1)[:ROUTED]
    maps = routing_maps(model, pred.images[index].to(device)).cpu()
    fig, axes = plt.subplots(len(index), 1 + len(classes),
                             figsize=(1.3 * (1 + len(classes)), 1.5 * len(index)), squeeze=False)
    for row, k in enumerate(index.tolist()):
        image = pred.images[k]
        axes[row, 0].imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0,
                            vmax=1)
        axes[row, 0].set_title(f"input ({names_of(pred.labels[k], classes)})", fontsize=8)
        low, high = float(maps[row].min()), float(maps[row].max())  # one scale per input
        for j in range(len(classes)):
            axes[row, 1 + j].imshow(maps[row, j].numpy(), cmap="viridis", vmin=low, vmax=high)
            axes[row, 1 + j].set_title(classes[j], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Where each class capsule takes its votes from: c_ij of the last routing "
                 f"iteration, summed over the primary capsule types, on the {model.grid}x"
                 f"{model.grid} grid", fontsize=9)
    return fig


def figure_lengths(ctx: Context) -> Any:
    import matplotlib.pyplot as plt
    pred = ctx.pred
    winning = pred.scores.max(dim=1).values
    right = pred.right
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = torch.linspace(0, 1, 41).numpy()
    if right.any():
        ax.hist(winning[right].numpy(), bins=bins, alpha=0.7,
                label=f"correct ({int(right.sum())})", density=True)
    if (~right).any():
        ax.hist(winning[~right].numpy(), bins=bins, alpha=0.7,
                label=f"wrong ({int((~right).sum())})", density=True)
    ax.set_xlabel("length of the winning capsule")
    ax.set_ylabel("density")
    ax.set_title("Capsule lengths of the predictions")
    ax.legend()
    return fig


def figure_pairs(ctx: Context) -> Any:
    import matplotlib.pyplot as plt
    model, pred, classes, device = ctx.model, ctx.pred, ctx.classes, ctx.device
    index = torch.arange(min(PAIRS, len(pred.labels)))
    images = pred.images[index].to(device)
    predicted, labels = pred.predicted[index], pred.labels[index]
    with torch.no_grad():
        poses = model(images).poses
        rebuilt = [overlay(model.reconstruct(poses, c.to(device))) for c in (predicted, labels)]
    grid = torch.stack([images.expand(-1, 3, -1, -1), *rebuilt], dim=1)
    names = [f"{names_of(t, classes)} as {names_of(p, classes)}"
             + ("" if bool((p == t).all()) else " (wrong)")
             for p, t in zip(predicted, labels)]
    fig, ax = plt.subplots(figsize=(4.5, 0.55 * len(index) + 1))
    image_axes(ax, grid, ["input", "predicted", "true"], names)
    ax.set_title("Two digits at once (paper Fig. 5): each digit rebuilt from its own capsule,\n"
                 "the lower class red, the higher green (yellow where they overlap)", fontsize=9)
    return fig


FIGURES: list[tuple[str, str, Callable[[Context], Any]]] = [
    ("reconstruction_by_mask.png", "The decoder rebuilds each input from one class capsule at a "
     "time: only the true class's capsule (framed) gives the digit back.", figure_by_mask),
    ("perturbation.png", "Each dimension of the predicted capsule, tweaked from -0.25 "
     "to +0.25: the dimensions encode stroke thickness, skew, width and the like (paper Fig. 4).",
     figure_perturbation),
    ("mistakes.png", "The most confidently wrong test images, rebuilt from the predicted and "
     "from the true class's capsule.", figure_mistakes),
    ("accuracy.png", "Test accuracy per class and the confusion matrix.", figure_accuracy),
    ("routing.png", "Routing by agreement: where in the image each class capsule draws its votes "
     "from.", figure_routing),
    ("lengths.png", "How long the winning capsule is for right and for wrong predictions.",
     figure_lengths),
]


PAIR_FIGURES: list[tuple[str, str, Callable[[Context], Any]]] = [
    ("pairs.png", "Overlapping digits segmented by their capsules: the input beside the decoder's "
     "two reconstructions, from the two longest capsules and from the true pair.", figure_pairs),
]


def png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def index_html(checkpoint: Path, figures: list[tuple[str, str, Any]], summary: str) -> bytes:
    items = "\n".join(f'<h2>{html.escape(name)}</h2>\n<p>{html.escape(text)}</p>\n'
                      f'<img src="{html.escape(name)}" alt="{html.escape(name)}">'
                      for name, text, _ in figures)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>capsnet figures"
            f"</title></head>\n<body>\n<h1>{html.escape(str(checkpoint))}</h1>\n"
            f"<p>{html.escape(summary)}</p>\n{items}\n</body></html>\n").encode()


def analyze(checkpoint_path: str, out: str | None, per_class: int, given: dict[str, Any]) -> Path:
    """Write every figure and index.html; return the folder. Files are written durably and
    index.html last; on a failure the figures written so far are removed."""
    import matplotlib
    matplotlib.use("Agg")
    from .config import Config
    from .run.build import build_run, check_structure
    from .networks import MODELS
    from .run.storage import load_checkpoint, load_state
    from .cli import resumed_settings
    from .run.storage import make_dir, write_file
    if not 1 <= per_class <= 20:
        raise UserError(f"--per-class {per_class} is not allowed: use a number from 1 to 20")
    checkpoint = load_checkpoint(checkpoint_path, weights=True)
    folder = Path(out) if out else Path(checkpoint_path).parent / "figures"
    cfg = resumed_settings(Config, checkpoint["config"], given)
    if not MODELS[cfg.model].capsules:
        raise UserError(f"{checkpoint_path} is a {cfg.model} checkpoint: the figures are of "
                        "capsules, which it has none of; python train.py --eval tests it")
    created = not folder.exists()
    make_dir(folder)  # before the work: an unwritable place fails at once
    written: list[Path] = []
    try:
        parts = build_run(cfg, train=False)
        for line in parts.kernels.warnings("drawing with", ""):
            print(line, file=sys.stderr, flush=True)
        check_structure(checkpoint["model_args"], parts.model_args, cfg.model)
        model = parts.model
        load_state(model, checkpoint["model"], "model")
        model.eval()
        pred = predict(model, parts.test_batches)
        ctx = Context(model, pred, parts.classes, per_class, parts.device)
        figures = FIGURES + (PAIR_FIGURES if parts.objects > 1 else [])
        for name, _, draw in tqdm(figures, desc="figures", unit="figure", leave=False):
            path = folder / name
            write_file(path, png(draw(ctx)))
            written.append(path)
        accuracy = 100 * float(pred.right.float().mean())
        what = "pair accuracy" if parts.objects > 1 else "accuracy"
        write_file(folder / "index.html", index_html(Path(checkpoint_path), figures, (
            f"Epoch {checkpoint['epoch']} of a {cfg.dataset} run; test {what} "
            f"{accuracy:.2f}% on {len(pred.labels)} test images.")))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # a folder made for this run leaves with it
        raise
    return folder


def main(argv: list[str] | None = None) -> int:
    from .cli import ArgumentParser, exit_status
    from .weights import names
    parser = ArgumentParser(prog="python -m capsnet.analyze", description=__doc__)
    parser.add_argument("checkpoint", nargs="?", help="a last.pt or best.pt")
    parser.add_argument("--pretrained", metavar="NAME", help="a model shipped in the package "
                        "(capsnet/weights/) instead of a checkpoint: " + ", ".join(names()))
    parser.add_argument("--out", metavar="DIR", help="where to write (default: figures/ in the "
                        "checkpoint's run directory)")
    parser.add_argument("--per-class", type=int, default=2, metavar="N",
                        help="test images per class in the reconstruction figure (1-20; "
                        "default: %(default)s)")
    from .config import DEVICES
    parser.add_argument("--device", choices=DEVICES, help="where the model runs: auto picks "
                        "cuda when there is a GPU (default: auto)")
    parser.add_argument("--data-dir", metavar="DIR", help="dataset root (default: the "
                        "checkpoint's, or $CAPSNET_DATA_DIR)")
    parser.add_argument("--test-samples", type=int, metavar="N",
                        help="use the first N test images (0: all; default: the checkpoint's)")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.pretrained is None):
        parser.error("give a checkpoint or --pretrained NAME (one of them)")
    given = {k: v for k, v in (("device", args.device), ("data_dir", args.data_dir),
                               ("test_samples", args.test_samples)) if v is not None}

    def work() -> None:
        from .weights import path_of
        checkpoint = args.checkpoint or str(path_of(args.pretrained))
        out = args.out or (f"figures/{args.pretrained}" if args.pretrained else None)
        folder = analyze(checkpoint, out, args.per_class, given)
        print(f"figures written to {folder} (open {folder / 'index.html'})")
    return exit_status(work)


if __name__ == "__main__":
    from .cli import exit_with
    exit_with(main())
