"""The run directory: config.json, metrics.csv (one row per epoch) and checkpoints."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from .errors import UserError

COLUMNS = ("epoch", "train_loss", "train_accuracy", "train_margin", "train_reconstruction",
           "test_loss", "test_accuracy", "test_margin", "test_reconstruction", "lr",
           "train_images_per_s", "seconds")


class RunDir:
    """One run's files. A new run never reuses a directory that already holds a run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metrics = path / "metrics.csv"
        self.last = path / "last.pt"
        self.best = path / "best.pt"

    @classmethod
    def create(cls, requested: str, root: str = "runs") -> RunDir:
        """Choose `requested`, or runs/<timestamp>[-N] when empty, for a new run.

        The directory is made by the first write, so a run that fails to start leaves nothing.
        """
        if requested:
            path = Path(requested)
            if path.exists() and any(path.iterdir()):
                raise UserError(f"--run-dir {path} already holds files; choose a new directory "
                                f"or continue that run with --resume {path / 'last.pt'}")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path, n = Path(root) / stamp, 1
            while path.exists():
                path, n = Path(root) / f"{stamp}-{n}", n + 1
        return cls(path)

    def write_config(self, cfg: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "config.json", "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=2)
            f.write("\n")

    def keep_epochs(self, last_epoch: int) -> None:
        """Drop metric rows after `last_epoch` (a resumed run recomputes them)."""
        if not self.metrics.exists():
            return
        with open(self.metrics, newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= last_epoch]
        tmp = self.metrics.with_name("metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics)

    def append_metrics(self, row: dict[str, float]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        new = not self.metrics.exists()
        with open(self.metrics, "a", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
