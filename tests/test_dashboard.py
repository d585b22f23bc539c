"""The live dashboard against a real Visdom server, and training without one."""
import json
import os
import signal
import subprocess
import sys

import pytest

import train
from capsnet.dashboard.assets import PACKAGES, ensure_assets, missing_files, verify
from capsnet.dashboard.dashboard import Dashboard, attach
from capsnet.errors import UserError
from capsnet.training import subscribe
from capsnet.run.rundir import RunDir
from capsnet.dashboard.server import answers
from capsnet.training import Trainer
from capsnet.config import Config
from conftest import SMALL_SETTINGS, fast_network
from visdom_server import ROOT, Server, client, free_port

LINES = {"loss": ["train (running)", "train", "test"],
         "accuracy": ["train (running)", "train", "test"],
         "parts": ["train score loss (running)", "train reconstruction (running)",
                   "train score loss", "train reconstruction", "test score loss",
                   "test reconstruction"],
         "lr": ["lr"], "throughput": ["train (running)", "train"]}


def dashboard_args(quick_args, port: int, env: str, epochs: int = 2,
                   autostart: bool = False) -> list[str]:
    return quick_args + ["--visdom", "--visdom-port", str(port), "--visdom-env", env,
                         "--visdom-every", "1", "--epochs", str(epochs),
                         "--visdom-autostart" if autostart else "--no-visdom-autostart"]


def replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def window(port: int, env: str, name: str) -> dict:
    data = client(port, env).get_window_data(name, env)
    assert data, f"window {name} is missing"
    return json.loads(data)


def traces(port: int, env: str, name: str) -> dict[str, list[float]]:
    return {t["name"]: t["x"] for t in window(port, env, name)["content"]["data"]}


def test_page_files_are_installed_once_from_pinned_packages():
    ensure_assets()  # fetches with npm if this environment does not have them yet
    assert missing_files() == []
    assert ensure_assets() is False  # nothing left to fetch: the server needs no network
    assert len(PACKAGES) == 15 and all(p.integrity.startswith("sha512-") for p in PACKAGES)


def test_setup_fetches_the_page_files_and_only_warns_when_it_cannot(tmp_path, monkeypatch,
                                                                     capsys):
    """make setup runs `python -m capsnet.dashboard.assets`: without npm it warns in one line and
    exits 0 (the dashboard tries again when it starts)."""
    from capsnet.dashboard import assets
    monkeypatch.setattr(assets, "static_dir", lambda: tmp_path / "static")
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)
    assert assets.main([]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: the dashboard's page files are missing and npm (Node.js) "
                          "is not installed") and len(err.splitlines()) == 1


def test_a_tampered_package_is_refused(tmp_path):
    tarball = tmp_path / "jquery-3.1.1.tgz"
    tarball.write_bytes(b"not the published tarball")
    with pytest.raises(UserError, match="does not match its pinned sha512 integrity"):
        verify(tarball, PACKAGES[0].integrity)


def test_training_streams_every_window(server, quick_args, capsys):
    assert train.main(dashboard_args(quick_args, server.port, "stream")) == 0
    err = capsys.readouterr().err
    assert "warning" not in err
    # 96 images in batches of 32, a point per batch: 3 per epoch, 2 epochs.
    epochs = [1.0, 2.0]
    for name, names in LINES.items():
        got = traces(server.port, "stream", name)
        assert sorted(got) == sorted(names), name
        for trace, xs in got.items():
            if trace.endswith("(running)"):  # a point per batch
                assert xs == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2]), (name, trace)
            elif name == "lr":  # the running points and each epoch's end
                assert xs == pytest.approx([1 / 3, 2 / 3, 1, 1, 4 / 3, 5 / 3, 2, 2])
            else:  # each epoch's means
                assert xs == epochs, (name, trace)
    loss = window(server.port, "stream", "loss")
    assert loss["title"] == "Loss"
    assert loss["content"]["layout"]["xaxis"]["title"] in ("epoch", {"text": "epoch"})
    heatmap = window(server.port, "stream", "confusion")["content"]["data"][0]
    assert len(heatmap["z"]) == 10 and all(len(row) == 10 for row in heatmap["z"])
    assert sum(map(sum, heatmap["z"])) == 48 and heatmap["x"] == list("0123456789")
    for name in ("images", "reconstructions", "by_mask", "perturbation", "routing"):
        image = window(server.port, "stream", name)
        assert image["type"] == "image", name
        assert image["content"]["src"].startswith("data:image/png;base64,")
    assert window(server.port, "stream", "perturbation")["title"].startswith(
        "Capsule dimensions of ")


def test_training_without_a_server_warns_once_and_finishes(quick_args, tmp_path, capsys):
    port = free_port()  # nothing listens here
    assert train.main(dashboard_args(quick_args, port, "nobody")) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{port} cannot be reached" in warnings[0]
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3
    assert (tmp_path / "run" / "last.pt").exists()


def test_without_the_page_files_training_runs_with_one_message(quick_args, tmp_path, capsys,
                                                              monkeypatch):
    import capsnet.dashboard.server

    def offline() -> bool:
        raise UserError("npm could not fetch the dashboard's page files (offline)")
    monkeypatch.setattr(capsnet.dashboard.server, "ensure_assets", offline)
    assert train.main(dashboard_args(quick_args, free_port(), "nofiles", autostart=True)) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "warning" in line or "error" in line] == [
        "warning: npm could not fetch the dashboard's page files (offline); "
        "training goes on without a dashboard"]
    assert (tmp_path / "run" / "last.pt").exists()


def test_a_killed_server_does_not_stop_training_and_plots_resume_on_its_return(
        data_root, tmp_path, capsys, monkeypatch):
    port = free_port()
    running = Server(port, tmp_path / "visdom").start()
    cfg = Config(data_dir=str(data_root), download=False, epochs=3, batch_size=32,
                 visdom_port=port, visdom_env="restart", visdom_every=1, visdom_autostart=False,
                 run_dir=str(tmp_path / "run"), **SMALL_SETTINGS)
    trainer = Trainer(cfg, RunDir.create(cfg.run_dir))
    trainer.listeners.append(attach(cfg, trainer.run_start()))

    def kill_then_restart(state: dict) -> None:
        if state["epoch"] == 1:
            running.stop()
        if state["epoch"] == 2:
            running.start()
    subscribe(trainer.engine, "on_end_epoch", kill_then_restart)
    # the sender has as long as it needs to catch up with the restarted server (a ceiling that
    # only stops a hang), not close()'s 15 s
    monkeypatch.setattr(Dashboard.close, "__defaults__", (600.0,))
    try:
        trainer.fit()
        err = capsys.readouterr().err
        warnings = [line for line in err.splitlines() if "warning" in line]
        assert len(warnings) == 1 and "cannot be reached" in warnings[0]
        assert "answers again; plots resumed" in err
        # The restarted server got every point again, the ones sent before it died included.
        loss = traces(port, "restart", "loss")
        assert loss["test"] == loss["train"] == [1.0, 2.0, 3.0]
        assert len(loss["train (running)"]) == 9
    finally:
        running.stop()


def test_train_py_starts_a_server_in_the_background_when_none_answers(quick_args, capsys):
    port = free_port()
    assert train.main(dashboard_args(quick_args, port, "auto", epochs=1, autostart=True)) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "started a Visdom server" in l)
    pid = int(line.split("pid ")[1].split(",")[0])
    try:
        assert answers("127.0.0.1", port)  # still up after training, for the user
        assert f"stop it with: kill {pid}" in line
        assert f"dashboard: http://127.0.0.1:{port}/env/auto" in out
        assert traces(port, "auto", "loss")["test"] == [1.0]
    finally:
        os.kill(pid, signal.SIGTERM)


def test_the_background_server_finds_the_package_from_any_directory(tmp_path):
    """The background server's PYTHONPATH names the folder that holds capsnet/, so that
    `python -m capsnet.dashboard` starts wherever train.py was started from."""
    import capsnet.dashboard.server as server
    assert (server.ROOT / "capsnet" / "dashboard" / "__main__.py").is_file()
    found = subprocess.run([sys.executable, "-c", "import capsnet.dashboard.server"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(server.ROOT)},
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr


def test_a_server_reachable_from_other_machines_is_announced(capsys, monkeypatch):
    from capsnet.dashboard.server import is_loopback, warn_if_exposed
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    monkeypatch.delenv("VISDOM_USERNAME", raising=False)
    warn_if_exposed("0.0.0.0", 8097)
    assert capsys.readouterr().err == (
        "warning: the dashboard listens on 0.0.0.0:8097, reachable from other machines; "
        "set VISDOM_USERNAME and VISDOM_PASSWORD to require a login\n")
    monkeypatch.setenv("VISDOM_USERNAME", "me")
    monkeypatch.setenv("VISDOM_PASSWORD", "secret")
    warn_if_exposed("0.0.0.0", 8097)
    assert capsys.readouterr().err.endswith("reachable from other machines\n")
    warn_if_exposed("127.0.0.1", 8097)
    assert capsys.readouterr().err == ""


def test_a_resumed_run_keeps_the_plotted_history(server, quick_args, tmp_path, capsys):
    assert train.main(dashboard_args(quick_args, server.port, "resumed", epochs=1)) == 0
    data = quick_args[quick_args.index("--data-dir") + 1]
    assert train.main(["--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "2",
                       "--data-dir", data]) == 0
    assert "warning" not in capsys.readouterr().err
    loss = traces(server.port, "resumed", "loss")
    assert loss["test"] == [1.0, 2.0]
    assert loss["resumed"] == [1.0, 1.0]  # a vertical line where training continued
    assert loss["train"] == [1.0, 2.0]  # epoch 1's mean from metrics.csv, then epoch 2's
    assert len(loss["train (running)"]) == 3  # epoch 2's live points
    assert traces(server.port, "resumed", "accuracy")["test"] == [1.0, 2.0]


def test_live_points_follow_fast_batches(server, data_root, tmp_path, monkeypatch):
    import types

    import capsnet.training as training
    cfg = Config(data_dir=str(data_root), download=False, epochs=1, batch_size=1,
                 shift=0, visdom_port=server.port, visdom_env="fast", visdom_every=8,
                 visdom_autostart=False, run_dir=str(tmp_path / "run"), **SMALL_SETTINGS)
    trainer = Trainer(cfg, RunDir.create(cfg.run_dir))
    # The loop's clock is a counter: each forward pass takes 1 ms of it, the other work after
    # every step 30 ms; the rates then depend on what is counted, not on this machine's load.
    clock = [0.0]
    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    network = fast_network(trainer.model)

    def timed_network(*args, **kwargs):
        clock[0] += 0.001
        return network(*args, **kwargs)
    trainer.network = timed_network
    dashboard = attach(cfg, trainer.run_start())
    trainer.listeners.append(dashboard)
    subscribe(trainer.engine, "on_update", lambda state: clock.__setitem__(0, clock[0] + 0.03))
    trainer.fit()
    xs = traces(server.port, "fast", "loss")["train (running)"]
    assert xs == pytest.approx([k * 8 / 96 for k in range(1, 13)])  # one point per 8 batches
    _, rates = dashboard.lines["throughput"].traces["train (running)"]
    assert rates == pytest.approx([1000.0] * 12)  # counting the other work: 32 images/s


def test_a_short_epoch_still_draws_its_training_lines(server, quick_args):
    """Fewer batches in an epoch than --visdom-every: no running points, and every window
    still holds the epoch's training line."""
    args = dashboard_args(quick_args, server.port, "short", epochs=2)
    assert train.main(replace(args, "--visdom-every", "100")) == 0
    for name, trace in (("loss", "train"), ("parts", "train score loss"),
                        ("parts", "train reconstruction"), ("lr", "lr"),
                        ("throughput", "train"), ("accuracy", "train")):
        assert traces(server.port, "short", name)[trace] == [1.0, 2.0], (name, trace)


def test_multimnist_dashboard_shows_pair_accuracy_and_two_colour_reconstructions(server, tmp_path,
                                                                                 capsys):
    import base64
    import io
    from PIL import Image
    from conftest import write_dataset
    root = write_dataset(tmp_path / "data", train=32, test=16)
    args = ["--dataset", "multimnist", "--data-dir", str(root), "--no-download", "--batch-size",
            "16", "--run-dir", str(tmp_path / "run")]
    assert train.main(dashboard_args(args, server.port, "pairs", epochs=1)) == 0
    accuracy = window(server.port, "pairs", "accuracy")
    assert accuracy["title"] == "Pair accuracy (both digits right)"
    names = {t["name"] for t in accuracy["content"]["data"]}
    assert "test, at least one right" in names
    heatmap = window(server.port, "pairs", "confusion")["content"]["data"][0]
    assert sum(map(sum, heatmap["z"])) == 2 * 16  # each digit of the 16 test pairs
    rebuilt = window(server.port, "pairs", "reconstructions")
    assert "red and green" in rebuilt["title"]
    png = base64.b64decode(rebuilt["content"]["src"].split(",", 1)[1])
    pixels = Image.open(io.BytesIO(png)).convert("RGB")
    red, green, blue = (channel.getextrema()[1] for channel in pixels.split())
    assert red > 0 and green > 0  # the two digits in their own colours
    assert "warning" not in capsys.readouterr().err
