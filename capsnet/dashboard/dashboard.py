"""Live Visdom dashboard of a training run: a listener of the Trainer, which it knows only by the
records of capsnet.records (RunStart, Progress, EpochEnd).

The training thread only records numbers; a sender thread ships them to Visdom, so a slow,
dead or restarted server never stalls training: one warning when it cannot be reached, and
every window is sent again in full when it answers again. `python -m capsnet.dashboard` runs
the server in the foreground.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..records import EpochEnd, Progress, RunStart
from .server import answers, credentials, is_visdom, start_background, url

if TYPE_CHECKING:
    from ..config import Config

SAMPLES = 32  # test images shown beside their reconstructions
IMAGE_WINDOW = {"width": 400, "height": 240}  # pixels: the grids scaled up, side by side
FIGURE_WINDOWS = {"by_mask": {"width": 440, "height": 460},  # pixels, fitting each grid's shape
                  "perturbation": {"width": 340, "height": 500},
                  "routing": {"width": 480, "height": 230}}
RECONSTRUCTED = ("predicted class", "the two predicted digits in red and green")
warnings.filterwarnings("ignore", message="The 'warn' method is deprecated",
                        category=DeprecationWarning)  # inside visdom's client


@dataclass
class Lines:
    """A line plot of named traces that grow point by point."""
    title: str
    ylabel: str
    xlabel: str = "epoch"
    traces: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)  # points of each trace on the server

    def add(self, trace: str, x: float, y: float) -> None:
        xs, ys = self.traces.setdefault(trace, ([], []))
        xs.append(x)
        ys.append(y)

    def opts(self) -> dict[str, Any]:
        return {"title": self.title, "xlabel": self.xlabel, "ylabel": self.ylabel,
                "showlegend": True}


@dataclass
class Snapshot:
    """A window replaced whole at each update: a heatmap or an image grid."""
    kind: str  # "heatmap" or "images"
    data: np.ndarray
    opts: dict[str, Any]
    version: int = 0
    sent: int = 0
    nrow: int = 8  # images per row of an image grid


class Dashboard:
    """Loss, accuracy, loss parts, learning rate, throughput, confusion and reconstructions."""

    def __init__(self, start: RunStart, host: str, port: int, env: str, every: int,
                 figures_every: int = 1) -> None:
        self.host, self.port, self.env, self.every = host, port, env, every
        self.showcase, self.figures_every = start.showcase, figures_every
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = False
        self.lines = {
            "loss": Lines("Loss", "loss"),
            "accuracy": (Lines("Pair accuracy (both digits right)", "pair accuracy (%)")
                         if self.showcase.objects > 1 else Lines("Accuracy", "accuracy (%)")),
            "parts": Lines("Loss parts", "loss"),
            "lr": Lines("Learning rate", "learning rate"),
            "throughput": Lines("Training throughput", "images/s"),
        }
        self.snapshots: dict[str, Snapshot] = {}
        from .figures import first_per_class
        pool = self.showcase.samples  # the test pass's first examples
        self.samples = pool.images[:SAMPLES]  # (<=32, C, H, W), on the device
        # shown: what the reconstructions rebuild (smallNORB's [0, 1] crops, not the network's
        # standardised input)
        self.sample_grid = (pool.targets if pool.labels.dim() == 1 else pool.images)[:SAMPLES] \
            .cpu().numpy()
        firsts = pool.labels if pool.labels.dim() == 1 else pool.labels[:, 0]
        shown = first_per_class(firsts.cpu(), len(self.showcase.classes), 1).to(firsts.device)
        self.figure_samples = pool.images[shown]  # one per class, as far as the pool has them
        self.last: tuple[float, ...] = ()
        self.client: Any = None
        self.reachable = True
        self.add_history(start.history, start.resumed_at)
        self.thread = threading.Thread(target=self.send_loop, name="dashboard", daemon=True)
        self.wake.set()  # connect at once: a page opened on an environment not yet created stays empty
        self.thread.start()

    # Training thread: record numbers, never wait for the server.

    @staticmethod
    def interval_sums(progress: Progress) -> tuple[float, ...]:
        """Loss, score loss and reconstruction sums, errors and examples of the epoch so far (over
        all processes), and the seconds its training steps took."""
        t = progress.totals
        return t.loss, t.score_loss, t.reconstruction, t.errors, t.counted, progress.step_seconds

    def on_start_epoch(self, progress: Progress) -> None:
        self.last = self.interval_sums(progress)

    def on_progress(self, progress: Progress) -> None:
        """A running point every `every` batches, after the batch's update: the means over the
        batches since the last point, and their throughput over the time of their training
        steps alone (forward, backward and update; not the work between steps)."""
        if progress.batch % self.every:
            return
        sums = self.interval_sums(progress)
        loss, score_loss, reconstruction, errors, count, seconds = (
            a - b for a, b in zip(sums, self.last))
        if count <= 0:
            return
        x = progress.epoch + progress.batch / progress.batches
        with self.lock:
            self.lines["loss"].add("train (running)", x, loss / count)
            self.lines["accuracy"].add("train (running)", x, 100.0 * (1 - errors / count))
            self.lines["parts"].add("train score loss (running)", x, score_loss / count)
            self.lines["parts"].add("train reconstruction (running)", x, reconstruction / count)
            self.lines["lr"].add("lr", x, progress.lr)
            self.lines["throughput"].add("train (running)", x, count / max(seconds, 1e-9))
        self.last = sums
        self.wake.set()

    def add_epoch(self, row: dict[str, float], x: float) -> None:
        """The points of one epoch's metrics row (under the lock): its training means, rate
        and throughput, and its test results."""
        self.lines["loss"].add("train", x, row["train_loss"])
        self.lines["parts"].add("train score loss", x, row["train_score_loss"])
        self.lines["parts"].add("train reconstruction", x, row["train_reconstruction"])
        self.lines["lr"].add("lr", x, row["lr"])
        self.lines["throughput"].add("train", x, row["train_images_per_s"])
        self.lines["loss"].add("test", x, row["test_loss"])
        self.lines["accuracy"].add("train", x, row["train_accuracy"])
        if "validation_loss" in row:
            self.lines["loss"].add("validation", x, row["validation_loss"])
            self.lines["accuracy"].add("validation", x, row["validation_accuracy"])
        self.lines["accuracy"].add("test", x, row["test_accuracy"])
        if "test_at_least_one" in row:
            self.lines["accuracy"].add("test, at least one right", x, row["test_at_least_one"])
        self.lines["parts"].add("test score loss", x, row["test_score_loss"])
        self.lines["parts"].add("test reconstruction", x, row["test_reconstruction"])

    def add_history(self, rows: list[dict[str, str]], resumed_at: float | None) -> None:
        """A resumed run's earlier epochs, from metrics.csv: the points of each epoch's row, as
        a live run draws them, and a vertical 'resumed' line on the loss and accuracy plots at
        the epoch where training continues."""
        if not rows or resumed_at is None:
            return
        for row in rows:
            self.add_epoch({k: float(v) for k, v in row.items() if k != "epoch"},
                           float(row["epoch"]))
        for name in ("loss", "accuracy"):
            ys = [y for _, values in self.lines[name].traces.values() for y in values]
            self.lines[name].add("resumed", resumed_at, min(ys))
            self.lines[name].add("resumed", resumed_at, max(ys))

    def on_epoch(self, end: EpochEnd) -> None:
        row, x, epoch = end.row, float(end.epoch), end.epoch
        capsules = self.showcase.capsules  # a decoder and routing to show
        classes = list(self.showcase.classes)
        with self.lock:
            self.add_epoch(row, x)
            self.put("confusion", "heatmap", end.confusion.astype(float), {
                "title": f"Test confusion matrix, epoch {epoch}",
                "rownames": classes, "columnnames": classes,
                "xlabel": "predicted class", "ylabel": "true class"})
        if capsules:
            from .figures import live_figures, reconstructions
            images, rebuilt = self.sample_grid, reconstructions(self.showcase, self.samples)
            with self.lock:
                self.put("images", "images", images, {
                    "title": f"First {len(images)} test images", **IMAGE_WINDOW})
                self.put("reconstructions", "images", rebuilt, {
                    "title": f"Their reconstructions "
                             f"({RECONSTRUCTED[self.showcase.objects > 1]}), epoch {epoch}",
                    **IMAGE_WINDOW})
        if capsules and self.figures_every and epoch % self.figures_every == 0:
            figures = live_figures(self.showcase, self.figure_samples, epoch)
            with self.lock:
                for name, (grid, title) in figures.items():
                    self.put(name, "images", grid.reshape(-1, *grid.shape[2:]),
                             {"title": title, **FIGURE_WINDOWS[name]}, nrow=grid.shape[1])
        self.wake.set()

    def put(self, name: str, kind: str, data: np.ndarray, opts: dict[str, Any],
            nrow: int = 8) -> None:
        if kind == "images" and data.shape[1] == 2:  # a stereo pair: its first view
            data = data[:, :1]
        old = self.snapshots.get(name)
        self.snapshots[name] = Snapshot(kind, data, opts, (old.version + 1) if old else 1,
                                        old.sent if old else 0, nrow)

    def close(self, timeout: float = 15.0) -> None:
        """Send what is left, then stop the sender (giving up after `timeout` seconds)."""
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.warn(f"the dashboard at {url(self.host, self.port)} did not take the last "
                      "updates in time; metrics.csv has them all")

    # Sender thread.

    def send_loop(self) -> None:
        while True:
            self.wake.wait(timeout=2.0)
            self.wake.clear()
            stopping = self.stopping
            try:
                self.send_all()
                if not self.reachable:
                    self.reachable = True
                    self.say(f"dashboard: {url(self.host, self.port)} answers again; plots resumed")
            except Exception as error:  # any failure of the server or the connection
                self.client = None
                if self.reachable:
                    self.reachable = False
                    self.warn(f"the dashboard at {url(self.host, self.port)} cannot be reached "
                              f"({type(error).__name__}); training goes on, metrics.csv and "
                              "checkpoints are kept, and plots resume when it answers")
                with self.lock:  # the training thread adds snapshots meanwhile
                    for window in self.lines.values():
                        window.sent.clear()
                    for snapshot in self.snapshots.values():
                        snapshot.sent = 0
            if stopping:
                return
            time.sleep(0.5)  # at most two rounds of updates a second

    def connect(self) -> Any:
        if self.client is None:
            import visdom
            logging.getLogger("visdom").setLevel(logging.CRITICAL)
            username, password = credentials() or (None, None)
            self.client = visdom.Visdom(server=f"http://{self.host}", port=self.port, env=self.env,
                                        raise_exceptions=True, use_incoming_socket=False,
                                        username=username, password=password)
        return self.client

    def unsent(self, window: Lines) -> dict[str, tuple[list[float], list[float], int]]:
        """Each trace's points not yet on the server, and its length."""
        with self.lock:
            return {t: (xs[window.sent.get(t, 0):], ys[window.sent.get(t, 0):], len(xs))
                    for t, (xs, ys) in window.traces.items()}

    def send_all(self) -> None:
        vis = self.connect()
        for name, window in self.lines.items():
            pending = self.unsent(window)
            if not any(xs for xs, _, _ in pending.values()):
                continue
            if window.sent and not vis.win_exists(name, env=self.env):
                window.sent.clear()  # the server restarted without our windows: send them whole
                pending = self.unsent(window)
            fresh, opts = not window.sent, window.opts()
            for trace, (xs, ys, total) in pending.items():
                if not xs:
                    continue
                update = None if fresh else "append"
                vis.line(X=np.array(xs), Y=np.array(ys), win=name, env=self.env, name=trace,
                         update=update, opts=opts)
                window.sent[trace] = total
                fresh = False
        with self.lock:
            snapshots = list(self.snapshots.items())
        for name, snapshot in snapshots:
            if snapshot.sent == snapshot.version:
                continue
            if snapshot.kind == "heatmap":
                vis.heatmap(X=snapshot.data, win=name, env=self.env, opts=snapshot.opts)
            else:
                vis.images(snapshot.data, nrow=snapshot.nrow, win=name, env=self.env,
                           opts=snapshot.opts)
            snapshot.sent = snapshot.version

    def say(self, message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    def warn(self, message: str) -> None:
        self.say(f"warning: {message}")


def attach(cfg: Config, start: RunStart) -> Dashboard | None:
    """Start a server if asked and none answers, then a Dashboard of the run that starts so:
    the caller adds it to the Trainer's listeners.

    Returns None, after one warning, when the server was to be started and could not be, or
    when what answers at host:port is not Visdom.
    """
    env = cfg.visdom_env or Path(cfg.run_dir).name
    address = url(cfg.visdom_host, cfg.visdom_port)
    page = f"{address}/env/{env}"
    if answers(cfg.visdom_host, cfg.visdom_port):
        if not is_visdom(cfg.visdom_host, cfg.visdom_port):
            print(f"warning: the server at {address} is not Visdom; training goes on without a "
                  "dashboard (choose another --visdom-port)", file=sys.stderr)
            return None
    elif cfg.visdom_autostart:
        log = Path(cfg.run_dir) / "visdom.log"
        try:
            pid = start_background(cfg.visdom_host, cfg.visdom_port, log)
        except UserError as error:
            print(f"warning: {error}; training goes on without a dashboard", file=sys.stderr)
            return None
        print(f"dashboard: started a Visdom server (pid {pid}, log {log}); it keeps running "
              f"after training, stop it with: kill {pid}")
    print(f"dashboard: {page}", flush=True)
    return Dashboard(start, cfg.visdom_host, cfg.visdom_port, env, cfg.visdom_every,
                     cfg.visdom_figures_every)
