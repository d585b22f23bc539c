"""Pictures that hold something but no digit (a letter, a symbol, a drawing, a photo of a
scene), refused by small networks that have learnt digits against such pictures: `python -m
capsnet.digitrule [--samples N] [--epochs E] [--data-dir ROOT] [--out FILE]` trains them on
MNIST's training split and stores them with the shipped model (capsnet/weights/no-digit.pt, the
threshold in mnist.json).

The gates (MEMBERS networks, each trained from its own seed) read the prepared 28x28 picture,
as the model does; their mean log-odds that it holds a digit is its score. Digits: MNIST's
training digits as they are, drawn again by pen, small, and typed in fonts; no digit:
capsnet.nondigits' letters and symbols of fonts drawn again by pen, digits mirrored or turned,
scribbles and colour shapes. The threshold is the score below which REFUSED of the held-out
training digits fall. The rule reads the picture, not the model, so it serves every MNIST
checkpoint. What a digit capsule says of a picture (its pose against its class's training
digits, its reconstruction) told letters from digits far less well (docs/predict.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cli import ArgumentParser, at_least, exit_status, exit_with

REFUSED = 0.0005  # of the held-out training digits, refused: the threshold
SAMPLES = 60000  # MNIST training digits the pictures are made from, by default
EPOCHS = 10
MEMBERS = 2  # gates averaged
FILE = "no-digit.pt"  # the package's rule, in capsnet/weights/
HELD_OUT = (0.42, 0.5)  # MNIST training digits (fractions of --samples) that set the threshold
HELD_OUT_SEED = 1  # their pictures' (capsnet.nondigits' "MNIST digits") random numbers


class Gate(nn.Module):
    """(B, 1, 28, 28) prepared pictures -> (B,) log-odds that each holds a digit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.hidden = nn.Linear(64 * 7 * 7, 128)
        self.out = nn.Linear(128, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 7, 7)
        return self.out(F.relu(self.hidden(x.flatten(1)))).flatten()


@dataclass
class DigitRule:
    gates: list[Gate]  # trained alike from other seeds: their mean log-odds is the score
    threshold: float  # a picture scored below it holds no digit
    about: str  # what it learnt from, in words

    def scores(self, images: Tensor, batch: int = 1000) -> Tensor:
        """(B,) mean log-odds of (B, 1, 28, 28) prepared pictures, on the CPU."""
        if len(images) == 0:
            return torch.zeros(0)
        with torch.inference_mode():
            return torch.cat([torch.stack([gate(images[start:start + batch].float().cpu())
                                           for gate in self.gates]).mean(dim=0)
                              for start in range(0, len(images), batch)])

    def save(self, path: Path) -> None:
        import io
        from .run.storage import write_file
        buffer = io.BytesIO()
        torch.save({"gates": [{k: v.half() for k, v in gate.state_dict().items()}
                              for gate in self.gates],
                    "threshold": self.threshold, "about": self.about}, buffer)
        write_file(path, buffer.getvalue())

    @staticmethod
    def load(path: Path) -> DigitRule:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        gates = []
        for state in stored["gates"]:
            gates.append(Gate())
            gates[-1].load_state_dict({k: v.float() for k, v in state.items()})
            gates[-1].eval()
        return DigitRule(gates, float(stored["threshold"]), str(stored["about"]))


def trained(digits: Tensor, nondigits: Tensor, held_out: Tensor, epochs: int, about: str,
            members: int = MEMBERS, progress: bool = False) -> DigitRule:
    """`members` gates, each trained from its own seed on (N, 1, 28, 28) digits against
    nondigits (Adam, class-balanced binary cross-entropy, random shifts of up to 2 pixels), the
    threshold set on held_out digits."""
    from tqdm import tqdm
    images = torch.cat([digits, nondigits])
    labels = torch.cat([torch.ones(len(digits)), torch.zeros(len(nondigits))])
    weights = torch.where(labels > 0, len(labels) / (2 * len(digits)),
                          len(labels) / (2 * len(nondigits)))
    gates = []
    passes = tqdm(total=members * epochs, desc="training the gates", unit="epoch",
                  disable=not progress)
    for seed in range(members):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        gate = Gate()
        optimizer = torch.optim.Adam(gate.parameters(), 1e-3)
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(images), 128):
                rows = order[start:start + 128]
                shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
                batch = torch.roll(images[rows], shift, (2, 3))
                loss = F.binary_cross_entropy_with_logits(gate(batch), labels[rows],
                                                          weight=weights[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            passes.update()
        gates.append(gate.eval())
    passes.close()
    rule = DigitRule(gates, 0.0, about)
    scores = rule.scores(held_out).sort().values
    rule.threshold = float(scores[int(REFUSED * len(scores))])
    return rule


def pictures(images: np.ndarray, labels: np.ndarray, processes: int,
             progress: bool = False) -> dict[str, np.ndarray]:
    """Every kind of capsnet.nondigits' pictures, and the held-out digits, each made from its
    share of MNIST training digits (N, 28, 28) in [0, 1] with their labels, by `processes`
    processes."""
    import contextlib
    import functools
    import multiprocessing
    from .nondigits import KINDS, made
    plan = {"held out": ("MNIST digits", HELD_OUT, HELD_OUT_SEED),
            **{name: (name, kind.share, kind.seed) for name, kind in KINDS.items()}}
    out = {}
    with contextlib.ExitStack() as stack:
        mapped = map
        if processes > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(processes))
            mapped = functools.partial(pool.map, chunksize=64)
        for name, (kind, (start, stop), seed) in plan.items():
            rows = slice(int(start * len(images)), int(stop * len(images)))
            began = time.monotonic()
            out[name] = made(kind, images[rows], labels[rows], seed, mapped)
            if progress:
                print(f"  {name}: {len(out[name])} pictures ({time.monotonic() - began:.0f} s)",
                      flush=True)
    return out


def learnt(images: np.ndarray, labels: np.ndarray, epochs: int, processes: int = 1,
           progress: bool = False) -> DigitRule:
    """The rule learnt from MNIST training digits (N, 28, 28) in [0, 1] and their labels."""
    from .nondigits import KINDS
    made = pictures(images, labels, processes, progress)

    def stacked(names: list[str]) -> Tensor:
        return torch.from_numpy(np.concatenate([made[name] for name in names]))[:, None]
    digits = [kind for kind in KINDS if KINDS[kind].digit]
    nondigits = [kind for kind in KINDS if not KINDS[kind].digit]
    about = (f"{sum(len(made[k]) for k in digits)} digits against "
             f"{sum(len(made[k]) for k in nondigits)} pictures of none (capsnet.nondigits), made "
             f"from {len(images)} MNIST training digits; the threshold refuses {REFUSED:.2%} of "
             f"{len(made['held out'])} held-out ones")
    return trained(stacked(digits), stacked(nondigits), stacked(["held out"]), epochs, about,
                   progress=progress)


def rule_for(dataset: str) -> tuple[DigitRule | None, str]:
    """The no-digit rule for a model of `dataset`, and a line that says which."""
    from .weights import FOLDER, record_of
    record = record_of("mnist").get("no_digit_rule")
    if dataset != "mnist":
        return None, (f"no-digit rule off: the package's is learnt on MNIST, and this model is "
                      f"of {dataset}")
    if record is None or not (FOLDER / record["file"]).is_file():
        return None, "no-digit rule off: the package has none (python -m capsnet.digitrule)"
    rule = DigitRule.load(FOLDER / record["file"])
    return rule, (f"no-digit rule: the package's {len(rule.gates)} gates, learnt on MNIST's "
                  f"training split, threshold {rule.threshold:.2f} (they read the picture, not "
                  f"the model)")


def main(argv: list[str] | None = None) -> int:
    import json
    import os
    from .cli import DATA_DIR_ENV
    parser = ArgumentParser(prog="python -m capsnet.digitrule", description=__doc__)
    parser.add_argument("--samples", type=int, default=SAMPLES, help="MNIST training digits "
                        "the pictures are made from (default: %(default)s)")
    parser.add_argument("--epochs", type=at_least(1), default=EPOCHS,
                        help="passes over the pictures (default: %(default)s)")
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV, "data"),
                        help=f"dataset root (default: ${DATA_DIR_ENV}, else data)")
    parser.add_argument("--out", metavar="FILE", help="where the rule is written (default: "
                        f"the package's capsnet/weights/{FILE}, its threshold in mnist.json)")
    parser.add_argument("--processes", type=at_least(1), default=os.cpu_count() or 1,
                        help="processes that draw the pictures (default: the CPUs)")
    args = parser.parse_args(argv)
    if not 1000 <= args.samples <= 60000:
        parser.error(f"--samples must be 1000 to 60000 (got {args.samples})")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        parser.error(f"--out {args.out}: its folder does not exist")

    def work() -> None:
        from .data.splits import load_split
        from .run.storage import write_file
        from .weights import FOLDER
        began = time.monotonic()
        split = load_split("mnist", args.data_dir, True, False)
        images = split.images[:args.samples, 0].numpy().astype(np.float32) / 255
        labels = split.labels[:args.samples].numpy()
        print(f"drawing pictures from {len(images)} MNIST training digits of {args.data_dir} "
              f"...", flush=True)
        rule = learnt(images, labels, args.epochs, args.processes, progress=True)
        out = Path(args.out) if args.out else FOLDER / FILE
        rule.save(out)
        print(f"threshold {rule.threshold:.3f}: {rule.about}\nwritten to {out} "
              f"({time.monotonic() - began:.0f} s)")
        if not args.out:
            path = FOLDER / "mnist.json"
            record = json.loads(path.read_text())
            record["no_digit_rule"] = {"file": FILE, "threshold": round(rule.threshold, 4),
                                       "about": rule.about}
            write_file(path, (json.dumps(record, indent=2) + "\n").encode())
            print(f"its threshold written into {path}")
    return exit_status(work)


if __name__ == "__main__":
    exit_with(main())
