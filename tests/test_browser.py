"""The dashboard page, rendered by headless Chromium while train.py streams to it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import Browser, chromium
from test_dashboard import LINES, ROOT, dashboard_args
from visdom_server import environments

pytestmark = pytest.mark.skipif(chromium() is None and not os.environ.get("CI"),
                                reason="Chromium is not installed here (.ci/run installs it)")

TRACES = sum(len(names) for names in LINES.values())  # 11 in the five line plots
TITLES = ["Loss", "Accuracy", "Loss parts", "Learning rate", "Training throughput",
          "Test confusion matrix", "First 32 test images", "Their reconstructions",
          "Reconstruction from each class's capsule", "Capsule dimensions of",
          "Routing: votes per class"]


def epochs_done(run: Path) -> int:
    """Epochs the run has finished, by its metrics.csv's rows."""
    try:
        return max(0, len((run / "metrics.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def test_the_dashboard_renders_every_window_while_training(server, quick_args, tmp_path):
    args = dashboard_args(quick_args, server.port, "browser", epochs=1000)
    run = Path(args[args.index("--run-dir") + 1])  # the run whose epochs the wait counts
    training = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The dashboard creates its environment as it starts, before the first epoch ends: the
        # wait goes on while the run has finished fewer than 5 (a ceiling stops a hang).
        ceiling = time.monotonic() + 900
        while "browser" not in environments(server.port):
            assert training.poll() is None, training.communicate()
            assert epochs_done(run) < 5 and time.monotonic() < ceiling, "no environment"
            time.sleep(0.2)
        with Browser() as browser:
            browser.goto(f"http://127.0.0.1:{server.port}/env/browser")
            opened = epochs_done(run)
            # Every epoch redraws every window: on a machine too busy to draw them in 3 minutes
            # the wait goes on while the run has not yet finished 20 more epochs.
            state = browser.wait_for(lambda s: s.get("plots", 0) >= 6 and s.get("images", 0) >= 5
                                     and s.get("traces", 0) >= TRACES
                                     and len(s.get("titles", [])) >= 11, timeout=180,
                                     waiting=lambda: training.poll() is None
                                     and epochs_done(run) < opened + 20)
            assert training.poll() is None, "training ended before the page was checked"
            browser.screenshot(tmp_path / "dashboard.png")
    finally:
        training.send_signal(signal.SIGINT)
        _, err = training.communicate(timeout=120)
    assert all(any(t.startswith(title) for t in state["titles"]) for title in TITLES), state
    assert state["plots"] >= 6 and state["images"] >= 5, state  # 5 line plots + the heatmap
    assert state["traces"] == TRACES, state  # every trace of the five line plots drew
    png = (tmp_path / "dashboard.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert training.returncode == 130 and "Traceback" not in err
