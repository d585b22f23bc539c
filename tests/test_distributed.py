"""torchrun with 2 CPU processes (gloo) on made data, against one process with the global batch."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from capsnet.run.storage import load_checkpoint
from conftest import SMALL, write_dataset

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # on any weight after 6 Adam steps; see test_two_processes_equal_one_...


def torchrun(script: str, *args: str, processes: int = 2, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", script, *args]
    return subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def flags(data: Path, run: Path, batch_size: int, epochs: int = 2) -> list[str]:
    """With a held-out validation split: the processes share the training split alone, and
    validate on the 16 held-out images together. A tiny CapsNet: what is shared between the
    processes does not depend on the widths. In fp32, whose sums' order alone differs."""
    return ["--data-dir", str(data), "--no-download", "--epochs", str(epochs), "--batch-size",
            str(batch_size), "--no-visdom", "--threads", "1", "--run-dir", str(run),
            "--validation-samples", "16", "--precision", "fp32", *SMALL]


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if k not in ("seconds", "train_images_per_s")}
                for row in csv.DictReader(f)]


def largest_difference(a: Path, b: Path) -> float:
    x, y = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return max((x[k] - y[k]).abs().max().item() for k in x)


@pytest.fixture(scope="module", autouse=True)
def launches_write_under_pytest(tmp_path_factory: pytest.TempPathFactory):
    """Each torchrun launch leaves a torchelastic_* folder in the temporary folder: put them in
    pytest's, which is removed after the suite."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("torchrun")))
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two epochs of 96 training and 50 test images: 2 processes of batch 16, and 1 of 32."""
    root = tmp_path_factory.mktemp("distributed")
    data = write_dataset(root / "data", train=96, test=50)
    two = torchrun("train.py", *flags(data, root / "two", 16))
    code, out, err = finished(two)
    assert code == 0, err
    one = subprocess.run([sys.executable, "train.py", *flags(data, root / "one", 32)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    return {"data": data, "two": root / "two", "one": root / "one", "root": root, "out": out}


def test_two_processes_equal_one_process_with_the_global_batch(runs):
    """Both runs see the same 32 images per step; only the order of float32 sums differs (a few
    1e-6 here). Adam moves a weight by about the learning rate, 1e-3, per step; TOLERANCE is a
    tenth of one step. Without gradient averaging each process follows its own half of the
    batch, and the weights part by about 1e-2, a hundred times the tolerance."""
    assert largest_difference(runs["two"] / "last.pt", runs["one"] / "last.pt") < TOLERANCE
    two, one = rows(runs["two"]), rows(runs["one"])
    assert [r["epoch"] for r in two] == [1.0, 2.0]  # one row per epoch: rank 0 alone writes
    for a, b in zip(two, one):
        assert a == pytest.approx(b, rel=1e-4)
    # The test accuracy over both processes' halves is that of the same model on all 50 images.
    assert two[-1]["test_accuracy"] == one[-1]["test_accuracy"]
    assert two[-1]["validation_accuracy"] == one[-1]["validation_accuracy"]
    control = torchrun("tests/train_without_averaging.py", *flags(runs["data"],
                                                                  runs["root"] / "alone", 16))
    code, _, err = finished(control)
    assert code == 0, err
    assert largest_difference(runs["root"] / "alone" / "last.pt", runs["one"] / "last.pt") \
        > 10 * TOLERANCE


def test_only_rank_0_writes_and_prints(runs):
    assert sorted(p.name for p in runs["two"].iterdir()) == \
        ["best.pt", "config.json", "last.pt", "metrics.csv"]
    lines = runs["out"].splitlines()
    assert sum(line.startswith("capsnet:") for line in lines) == 1
    assert "2 processes, global batch 32" in lines[0]
    assert sum(line.startswith("epoch 2/2") for line in lines) == 1
    checkpoint = load_checkpoint(runs["two"] / "last.pt")
    assert not any(key.startswith("module.") for key in checkpoint["model"])


def test_resume_under_torchrun_and_a_distributed_checkpoint_in_one_process(runs):
    root, data = runs["root"], runs["data"]
    first = torchrun("train.py", *flags(data, root / "halves", 16, epochs=1))
    assert finished(first)[0] == 0
    (root / "halves-one").mkdir()
    (root / "halves-one" / "last.pt").write_bytes((root / "halves" / "last.pt").read_bytes())
    # in micro-batches of 6, 6 and 4 per process: DDP synchronises each step once, in the
    # last part's backward (no_sync before it), and the run follows the whole batches' run
    resumed = torchrun("train.py", "--resume", str(root / "halves" / "last.pt"), "--epochs", "2",
                       "--data-dir", str(data), "--micro-batch", "6")
    code, _, err = finished(resumed)
    assert code == 0, err
    for resumed_row, straight_row in zip(rows(root / "halves"), rows(runs["two"]), strict=True):
        assert resumed_row == pytest.approx(straight_row, rel=1e-4)
    assert largest_difference(root / "halves" / "last.pt", runs["two"] / "last.pt") < TOLERANCE
    assert train.main(["--resume", str(root / "halves-one" / "last.pt"), "--epochs", "2",
                       "--batch-size", "32", "--data-dir", str(data)]) == 0  # one process
    assert largest_difference(root / "halves-one" / "last.pt", runs["one"] / "last.pt") < TOLERANCE


def test_an_interrupt_stops_every_process_at_the_same_batch(runs, capsys):
    run = runs["root"] / "interrupted"
    job = torchrun("train.py", *flags(runs["data"], run, 16, epochs=1000), "--log-every", "1",
                   start_new_session=True)
    deadline = time.time() + 900  # a ceiling that only stops a hang
    while not (run / "last.pt").exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGTERM)  # as a scheduler stops a job: every process gets it
    _, _, err = finished(job, timeout=120)
    assert err.count("interrupted: saved") == 1  # rank 0's line; both ranks exit with 130
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["processes"] == 2 and len(checkpoint["meters"]) == 2
    copy = runs["root"] / "interrupted-one"  # one process resumes a copy: it may finish it
    copy.mkdir()
    (copy / "last.pt").write_bytes((run / "last.pt").read_bytes())
    code = train.main(["--resume", str(copy / "last.pt"), "--epochs",
                       str(checkpoint["epoch"] + 1), "--data-dir", str(runs["data"])])
    err = capsys.readouterr().err
    if checkpoint["batch"]:  # a share of an epoch belongs to its processes
        assert code == 2 and "of a run of 2 processes; resume it with as many" in err
    else:  # stopped between epochs: any number of processes goes on from there
        assert code == 0, err
    again = torchrun("train.py", "--resume", str(run / "last.pt"), "--epochs",
                     str(checkpoint["epoch"] + 1), "--data-dir", str(runs["data"]))
    code, _, err = finished(again)
    assert code == 0, err
    assert load_checkpoint(run / "last.pt")["batch"] == 0


def test_a_failing_process_ends_the_job(runs):
    run = runs["root"] / "failing"
    job = torchrun("train.py", *flags(runs["data"], run, 16, epochs=1000))
    deadline = time.time() + 900  # a ceiling that only stops a hang
    while not (run / "last.pt").exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.2)
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True,
                                              text=True).stdout.split()]
    rank_1 = next(pid for pid in workers
                  if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    os.kill(rank_1, signal.SIGKILL)  # a crashed process
    # torchrun ends the job when a worker dies (the survivor is not left waiting for its
    # collectives' timeout); the ceiling only stops a hang
    code, _, err = finished(job, timeout=300)
    assert code != 0
    assert load_checkpoint(run / "last.pt")["epoch"] >= 1  # the last good checkpoint survives
