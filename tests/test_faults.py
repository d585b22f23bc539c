"""Faults lose nothing: failed writes, a busy run directory, divergence, damaged checkpoints."""
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from capsnet.run import storage
from capsnet.run.storage import load_checkpoint, save_checkpoint
from capsnet.errors import UserError
from conftest import run_main, write_dataset

ROOT = Path(__file__).resolve().parents[1]


def flag(args: list[str], name: str, value: str) -> list[str]:
    args = list(args)
    if name in args:
        args[args.index(name) + 1] = value
    else:
        args += [name, value]
    return args


def data_dir(quick_args: list[str]) -> str:
    return quick_args[quick_args.index("--data-dir") + 1]


def last_line(err: str) -> str:
    """What was printed last, after the progress bars (which redraw with carriage returns)."""
    return err.splitlines()[-1].split("\r")[-1]


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


def test_a_run_directory_that_cannot_be_made(quick_args, capsys):
    code, err = run_main(flag(quick_args, "--run-dir", "/proc/capsnet-run"), capsys)
    assert code == 2 and err == ("error: could not create the directory /proc/capsnet-run "
                                 "(No such file or directory)")


def test_a_full_disk_mid_checkpoint_keeps_the_last_good_one(quick_args, tmp_path, monkeypatch,
                                                           capsys):
    run = tmp_path / "run"
    real_write = os.write

    def write(fd: int, data) -> int:
        name = os.readlink(f"/proc/self/fd/{fd}")
        rows = (run / "metrics.csv").read_text().count("\n") if (run / "metrics.csv").exists() else 0
        if name.endswith(".pt.tmp") and rows == 3:  # epoch 2's checkpoint, after a first chunk
            if os.fstat(fd).st_size > 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, bytes(data[:1 << 20]))
        return real_write(fd, data)
    monkeypatch.setattr(storage.os, "write", write)
    code, err = run_main(flag(quick_args, "--epochs", "3"), capsys)
    assert code == 2 and "Traceback" not in err
    line = last_line(err)
    assert line.startswith(f"error: could not write {run}/") and "(No space left on device)" in line
    assert f"the last good checkpoint is {run / 'last.pt'} (end of epoch 1)" in line
    assert line.endswith(f"continue with: python train.py --resume {run / 'last.pt'}")
    assert leftovers(run) == [] and not (run / "lock").exists()
    monkeypatch.setattr(storage.os, "write", real_write)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert train.main(["--resume", str(run / "last.pt"), "--data-dir", data_dir(quick_args),
                       "--epochs", "2"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_an_unwritable_file_is_named_with_its_cause(quick_args, tmp_path, monkeypatch, capsys):
    real_open = os.open

    def refuse_config(path, *args, **kwargs):
        if str(path).endswith("config.json.tmp"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(storage.os, "open", refuse_config)
    code, err = run_main(quick_args, capsys)
    run = tmp_path / "run"
    assert code == 2 and err == f"error: could not write {run / 'config.json'} (Permission denied)"
    assert not run.exists()  # a run that could not start leaves nothing


def test_writes_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(storage.os, "fsync",
                        lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                    real_fsync(fd)))
    target = tmp_path / "sub" / "file.txt"
    storage.write_file(target, b"new")
    assert target.read_bytes() == b"new"
    assert synced == [str(target) + ".tmp", str(target.parent)]


def test_divergence_stops_with_the_last_good_checkpoint(quick_args, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(quick_args) == 0
    saved = (run / "last.pt").read_bytes(), (run / "best.pt").read_bytes()
    code, err = run_main(["--resume", str(run / "last.pt"), "--data-dir", data_dir(quick_args),
                          "--epochs", "3", "--reconstruction-weight", "1e40"], capsys)
    assert code == 2 and "Traceback" not in err
    line = last_line(err)
    assert line.startswith("error: training diverged: the loss is not finite at epoch 2, "
                           "batch 1 (step 4)")
    assert f"the last good checkpoint is {run / 'last.pt'} (end of epoch 1)" in line
    assert ((run / "last.pt").read_bytes(), (run / "best.pt").read_bytes()) == saved
    assert leftovers(run) == [] and not (run / "lock").exists()


def test_a_busy_run_directory_is_refused_and_a_stale_lock_taken_over(quick_args, tmp_path,
                                                                     capsys):
    run = tmp_path / "run"
    args = flag(quick_args, "--epochs", "1000")
    first = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (run / "last.pt").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert (run / "last.pt").exists(), first.communicate()
    resume = ["--resume", str(run / "last.pt"), "--data-dir", data_dir(quick_args), "--epochs",
              "1000"]
    capsys.readouterr()
    assert train.main(resume) == 2  # this process, while the first trains
    err = capsys.readouterr().err
    assert err.startswith(f"error: the run directory {run} is in use by process {first.pid} on ")
    assert len(err.splitlines()) == 1
    first.kill()  # no chance to clean up: the lock file stays behind
    first.wait(60)
    assert (run / "lock").exists()
    epoch = load_checkpoint(run / "last.pt")["epoch"]
    assert train.main(resume[:-1] + [str(epoch + 1)]) == 0
    assert f"warning: taking over the lock of {run} from process {first.pid} on " in \
        capsys.readouterr().err
    assert not (run / "lock").exists()


def flip_a_byte(path: Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda p: flip_a_byte(p, 0.5), "is damaged: its contents do not match the digest"),
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]),
     "is not a readable capsnet checkpoint"),
])
@pytest.mark.parametrize("action", ["--resume", "--eval"])
def test_a_damaged_checkpoint_is_one_line(damage, message, action, quick_args, tmp_path, capsys):
    assert train.main(quick_args) == 0
    path = tmp_path / "run" / "last.pt"
    damage(path)
    capsys.readouterr()
    code, err = run_main([action, str(path), "--epochs", "2"], capsys)
    assert code == 2 and err == err.splitlines()[0] and message in err


def rewritten(path: Path, change) -> Path:
    """The checkpoint at `path` changed by `change(payload)`, saved with a valid digest."""
    payload = load_checkpoint(path)
    change(payload)
    out = path.with_name("changed.pt")
    save_checkpoint(out, payload)
    return out


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("data_rng"), "is not a capsnet checkpoint of this version (it lacks data_rng"),
    (lambda p: p["model"].pop("decoder.layers.0.bias"),
     "the checkpoint's model does not fit (Error(s) in loading state_dict for CapsNet"),
    (lambda p: p["model"].update({"digits.weight": torch.zeros(1152, 5, 16, 8)}),
     "the checkpoint's model does not fit"),
    (lambda p: p["optimizer"]["param_groups"].clear(),
     "the checkpoint's optimizer state does not fit"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line(change, message, quick_args, tmp_path, capsys):
    assert train.main(quick_args) == 0
    path = rewritten(tmp_path / "run" / "last.pt", change)
    capsys.readouterr()
    code, err = run_main(["--resume", str(path), "--epochs", "2", "--data-dir",
                          data_dir(quick_args)], capsys)
    assert code == 2 and err == err.splitlines()[0] and message in err, err


def test_a_checkpoint_is_used_on_its_own_dataset_unless_allowed(quick_args, tmp_path, capsys,
                                                                monkeypatch):
    assert train.main(quick_args) == 0
    path = tmp_path / "run" / "best.pt"
    other = write_dataset(tmp_path / "other", name="FashionMNIST")
    capsys.readouterr()
    code, err = run_main(["--eval", str(path), "--dataset", "fashion-mnist", "--data-dir",
                          str(other)], capsys)
    assert code == 2 and "the checkpoint was trained on mnist" in err
    assert "pass --allow-other-dataset to use it anyway" in err
    assert train.main(["--eval", str(path), "--dataset", "fashion-mnist", "--data-dir",
                       str(other), "--allow-other-dataset"]) == 0
    assert "T-shirt" in capsys.readouterr().out


def test_the_environment_names_the_dataset_root_on_resume_and_eval(quick_args, tmp_path, capsys,
                                                                   monkeypatch):
    first_root = write_dataset(tmp_path / "first")
    assert train.main(flag(quick_args, "--data-dir", str(first_root))) == 0
    moved = tmp_path / "moved"
    first_root.rename(moved)
    monkeypatch.setenv("CAPSNET_DATA_DIR", str(moved))
    assert train.main(["--eval", str(tmp_path / "run" / "last.pt")]) == 0
    assert train.main(["--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "2"]) == 0


@pytest.mark.parametrize("action", ["train", "--eval"])
def test_ctrl_c_before_training_is_one_line(action, quick_args, tmp_path, monkeypatch, capsys):
    import capsnet.run.build
    if action == "--eval":
        assert train.main(quick_args) == 0
        args = ["--eval", str(tmp_path / "run" / "last.pt"), "--data-dir", data_dir(quick_args)]
    else:
        args = quick_args

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C during a download or the test pass
    monkeypatch.setattr(capsnet.run.build, "load_split", interrupted)
    capsys.readouterr()
    code, err = run_main(args, capsys)
    assert code == 130 and err == "interrupted"


def test_npm_that_hangs_is_one_line(tmp_path, monkeypatch):
    from capsnet.dashboard import assets

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))
    monkeypatch.setattr(assets.subprocess, "run", hang)
    with pytest.raises(UserError, match="npm did not fetch the dashboard's page files within 5 s"):
        assets.npm_pack(["jquery@3.1.1"], tmp_path, timeout=5)


def test_a_server_that_does_not_answer_in_time_is_stopped(tmp_path, monkeypatch):
    from capsnet.dashboard import server
    from capsnet.dashboard.server import answers, start_background
    from visdom_server import free_port
    port = free_port()
    monkeypatch.setattr(server, "answers", lambda host, port: False)  # it never answers
    with pytest.raises(UserError, match="did not answer .* within 0 s and was stopped"):
        start_background("127.0.0.1", port, tmp_path / "visdom.log", str(tmp_path / "env"),
                         wait=0.1)
    # No server process is left, listening or still starting (stop() waited for it to end).
    left = subprocess.run(["pgrep", "-f", f"capsnet.dashboard --host 127.0.0.1 --port {port} "],
                          capture_output=True, text=True)
    assert left.returncode == 1 and left.stdout == ""
    assert not answers("127.0.0.1", port)
