"""The run directory: config.json, metrics.csv (one row per epoch), checkpoints and a lock.

Every file is written through capsnet.run.storage.write_file (temporary file, fsync, rename).
While a run trains, it holds an exclusive lock on the directory's `lock` file, so a second
process cannot train (or resume) into it.
"""
from __future__ import annotations

import csv
import dataclasses
import fcntl
import io
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, TYPE_CHECKING

from ..compat import metrics_row
from ..errors import UserError
from .storage import WriteError, cause, make_dir, write_file

if TYPE_CHECKING:
    from ..config import Config

COLUMNS = ("epoch", "train_loss", "train_accuracy", "train_score_loss", "train_reconstruction",
           "test_loss", "test_accuracy", "test_score_loss", "test_reconstruction", "lr",
           "train_images_per_s", "seconds", "averaged_epochs")
LOCK = "lock"


class RunDir:
    """One run's files. A new run never reuses a directory that already holds a run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metrics = path / "metrics.csv"
        self.last = path / "last.pt"
        self.best = path / "best.pt"
        self.lock_fd: int | None = None

    @classmethod
    def create(cls, requested: str, root: str = "runs") -> RunDir:
        """Choose `requested`, or runs/<timestamp>[-N] when empty, for a new run.

        The directory is made when the run takes its lock, so a run that fails to start leaves
        nothing.
        """
        if requested:
            path = Path(requested)
            cls(path).refuse_if_used()
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path, n = Path(root) / stamp, 1
            while path.exists():
                path, n = Path(root) / f"{stamp}-{n}", n + 1
        return cls(path)

    def refuse_if_used(self) -> None:
        if self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir()):
            raise UserError(f"--run-dir {self.path} already holds files; choose a new directory "
                            f"or continue that run with --resume {self.last}")

    def continue_from(self, source: Path) -> None:
        """Start this new directory of a resumed run with copies of the run's metrics.csv and
        best.pt in `source`, which stays as it was."""
        for name in (self.metrics.name, self.best.name):
            if (source / name).is_file():
                write_file(self.path / name, (source / name).read_bytes())

    def lock(self, new: bool) -> None:
        """Take the directory's lock for this process (for a `new` run, also check that the
        directory is still empty). A lock left by a process that is gone is taken over."""
        make_dir(self.path)
        lock = self.path / LOCK
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise WriteError(f"could not create the lock file {lock} ({cause(error)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"the run directory {self.path} is in use by {holder}; wait for it to "
                            "finish or stop it, or choose another --run-dir") from None
        stale = os.pread(fd, 200, 0).decode(errors="replace").strip()
        self.lock_fd = fd
        if new:
            try:
                self.refuse_if_used()
            except UserError:
                self.unlock()
                raise
        if stale:
            print(f"warning: taking over the lock of {self.path} from {stale}, which is no longer "
                  "running", file=sys.stderr)
        holder = f"process {os.getpid()} on {socket.gethostname()} (lock file {lock})"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
            os.fsync(fd)
        except OSError as error:
            self.unlock()
            raise WriteError(f"could not write the lock file {lock} ({cause(error)})") from None

    def unlock(self) -> None:
        """Release the lock and remove the lock file; remove the directory if nothing else is in it."""
        if self.lock_fd is None:
            return
        try:
            (self.path / LOCK).unlink(missing_ok=True)
            if not any(self.path.iterdir()):
                self.path.rmdir()
        except OSError:
            pass  # a lock file that stays behind is taken over by the next run
        os.close(self.lock_fd)
        self.lock_fd = None

    def write_config(self, cfg: Config, kernels: dict[str, str]) -> None:
        """The run's settings, and `kernels`: the form each layer with a fast form computes
        with (capsnet.kernels)."""
        record = {**dataclasses.asdict(cfg), "kernels": kernels}
        write_file(self.path / "config.json", (json.dumps(record, indent=2) + "\n").encode())

    def read_metrics(self) -> list[dict[str, str]]:
        return read_rows(self.metrics)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        text = io.StringIO()
        extra = [k for k in (rows[0] if rows else {}) if k not in COLUMNS]  # e.g. MultiMNIST's
        writer = csv.DictWriter(text, COLUMNS + tuple(extra))
        writer.writeheader()
        writer.writerows(rows)
        write_file(self.metrics, text.getvalue().encode())

    def keep_epochs(self, last_epoch: int) -> None:
        """Drop metric rows after `last_epoch` (a resumed run recomputes them)."""
        if self.metrics.exists():
            self.write_metrics([r for r in self.read_metrics() if int(r["epoch"]) <= last_epoch])

    def append_metrics(self, row: dict[str, float]) -> None:
        """Add one epoch's row: the whole file is rewritten durably (it is small)."""
        formatted = {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}
        self.write_metrics(self.read_metrics() + [formatted])


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv ([] when there is none), an earlier version's columns under
    their names now."""
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            return [metrics_row(row) for row in csv.DictReader(f)]
    except OSError as error:
        raise UserError(f"could not read {path} ({cause(error)})") from None
