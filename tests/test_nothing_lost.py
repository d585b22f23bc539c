"""Nothing a user does loses a result or is silently ignored: a shipped model is not overwritten
by accident, a resume elsewhere leaves the first run as it was, every default output folder is
ignored by git, and what a run could not do as asked is said (a port that is not Visdom, more
samples than a split holds, a compile that fell back to eager, a wrong input)."""
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import capsnet
import train
from capsnet import weights
from capsnet.errors import UserError
from capsnet.model import CapsNet
from capsnet.weights.__main__ import main as ship_main
from conftest import run_main

ROOT = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def shipped(tiny_checkpoints, data_root, tmp_path, monkeypatch) -> Path:
    """A folder holding a shipped model "tiny"."""
    monkeypatch.setenv("CAPSNET_DATA_DIR", str(data_root))
    out = tmp_path / "shipped"
    assert ship_main([str(tiny_checkpoints["capsnet"]), "tiny", "--out", str(out)]) == 0
    return out


def test_shipping_over_a_model_is_refused_without_force_and_nothing_changes(
        shipped, tiny_checkpoints, capsys):
    before = tree(shipped)
    capsys.readouterr()
    assert ship_main([str(tiny_checkpoints["capsnet"]), "tiny", "--out", str(shipped)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {shipped / 'tiny.pt'} exists: pass --force to replace the model "
                   "'tiny' (it is replaced only once the new one has passed its test)")
    assert tree(shipped) == before


def test_a_forced_ship_whose_test_fails_keeps_the_model_that_was_there(
        shipped, tiny_checkpoints, tmp_path, monkeypatch, capsys):
    before = tree(shipped)
    monkeypatch.setenv("CAPSNET_DATA_DIR", str(tmp_path / "nowhere"))  # its test cannot run
    assert ship_main([str(tiny_checkpoints["capsnet"]), "tiny", "--out", str(shipped),
                      "--force"]) == 2
    assert tree(shipped) == before


def test_a_forced_ship_replaces_the_model_once_tested(shipped, tiny_checkpoints, tmp_path,
                                                      data_root):
    run = Path(shutil.copytree(tiny_checkpoints["capsnet"].parent, tmp_path / "run"))
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "2",
                       "--data-dir", str(data_root)]) == 0
    assert ship_main([str(run / "last.pt"), "tiny", "--out", str(shipped), "--force"]) == 0
    assert weights.record_of("tiny", shipped)["epoch"] == 2
    assert sorted(p.name for p in shipped.iterdir()) == ["tiny-metrics.csv", "tiny.json",
                                                          "tiny.pt"]


def test_a_shipped_model_ships_again_under_another_name_with_its_record(shipped, tmp_path):
    """As the device check's weights are shipped: a NAME.pt beside its NAME-metrics.csv."""
    assert ship_main([str(shipped / "tiny.pt"), "again", "--out", str(tmp_path / "out")]) == 0
    first, again = weights.record_of("tiny", shipped), weights.record_of("again", tmp_path / "out")
    assert again["test_accuracy"] == first["test_accuracy"]
    assert again["commands"] == first["commands"] and again["epoch"] == first["epoch"]


def test_a_shipped_model_without_its_metrics_is_not_shipped(shipped, tmp_path, capsys):
    (shipped / "tiny-metrics.csv").unlink()
    capsys.readouterr()
    assert ship_main([str(shipped / "tiny.pt"), "again", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {shipped / 'tiny-metrics.csv'} does not exist: it is shipped beside the weights "
        "(a run's metrics.csv, or a shipped model's NAME-metrics.csv)")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_resume_into_another_run_dir_continues_there_and_leaves_the_first_as_it_was(
        tiny_checkpoints, data_root, tmp_path):
    first = Path(shutil.copytree(tiny_checkpoints["capsnet"].parent, tmp_path / "a"))
    before = tree(first)
    second = tmp_path / "b"
    assert train.main(["--resume", str(first / "last.pt"), "--epochs", "2", "--run-dir",
                       str(second), "--data-dir", str(data_root)]) == 0
    assert tree(first) == before
    rows = (second / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2"]  # the first run's row, then its own
    assert torch.load(second / "last.pt", weights_only=True)["epoch"] == 2
    assert (second / "best.pt").is_file()


def test_a_resume_into_a_run_dir_that_holds_files_is_refused(tiny_checkpoints, data_root,
                                                             tmp_path, capsys):
    first = Path(shutil.copytree(tiny_checkpoints["capsnet"].parent, tmp_path / "a"))
    taken = Path(shutil.copytree(tiny_checkpoints["capsnet"].parent, tmp_path / "b"))
    before = tree(taken)
    code, err = run_main(["--resume", str(first / "last.pt"), "--epochs", "2", "--run-dir",
                          str(taken), "--data-dir", str(data_root)], capsys)
    assert code == 2 and f"--run-dir {taken} already holds files" in err
    assert tree(taken) == before


def test_a_resume_naming_its_own_run_dir_resumes_there(tiny_checkpoints, data_root, tmp_path):
    first = Path(shutil.copytree(tiny_checkpoints["capsnet"].parent, tmp_path / "a"))
    assert train.main(["--resume", str(first / "last.pt"), "--epochs", "2", "--run-dir",
                       str(tmp_path / "." / "a"), "--data-dir", str(data_root)]) == 0
    assert torch.load(first / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("folder", ["runs", "data", "figures", "experiments", "device-check"])
def test_every_default_output_folder_is_ignored_by_git(folder):
    done = subprocess.run(["git", "check-ignore", "-q", f"{folder}/a-file"], cwd=ROOT)
    assert done.returncode == 0, f"{folder}/ is not in .gitignore"


def test_a_dashboard_port_held_by_another_server_gets_one_warning(quick_args, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        args = [a for a in quick_args if a != "--no-visdom"]
        code = train.main(args + ["--visdom-port", str(server.server_address[1])])
    finally:
        server.shutdown()
    captured = capsys.readouterr()
    assert code == 0
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: the server at http://127.0.0.1:{server.server_address[1]} is "
                        "not Visdom; training goes on without a dashboard (choose another "
                        "--visdom-port)"]
    assert "dashboard: http" not in captured.out


def test_more_samples_than_a_split_holds_are_said_in_the_first_line(quick_args, capsys):
    assert train.main(quick_args + ["--train-samples", "100000", "--test-samples", "20000"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "--train-samples 100000 is more than the 96 there: all are used" in first
    assert "--test-samples 20000 is more than the 48 there: all are used" in first


def test_a_compile_that_fails_falls_back_to_eager_with_one_warning(quick_args, monkeypatch,
                                                                   capsys):
    def failing(model, mode=None):
        def run(*args, **kwargs):
            raise RuntimeError("backend exploded\nmore lines")
        return run
    monkeypatch.setattr(torch, "compile", failing)
    assert train.main(quick_args + ["--compile"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: --compile failed") == 1
    assert "warning: --compile failed (RuntimeError: backend exploded); running eager from " \
           "here on" in err
    from torch._dynamo import config as dynamo
    assert not dynamo.suppress_errors  # nothing hidden process-wide


@pytest.mark.parametrize("shape", [(2, 1, 29, 29), (2, 3, 28, 28), (2, 1, 16, 16), (1, 28, 28)])
def test_a_model_called_on_images_of_another_shape_says_the_shape_it_takes(shape):
    for model in (CapsNet(conv1_channels=16, primary_types=4), capsnet.pretrained("mnist")):
        with pytest.raises(ValueError, match=r"^this CapsNet takes images of shape \(B, 1, 28, "
                                             r"28\), got "):
            model(torch.rand(shape))


def test_the_package_lists_its_exports_and_says_plainly_when_there_is_no_gpu():
    assert {"CapsNet", "pretrained", "squash", "dynamic_routing"} <= set(dir(capsnet))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="^pretrained\\('mnist', device='cuda'\\): no CUDA GPU "
                                            "is available here; use device='cpu'$"):
            capsnet.pretrained("mnist", device="cuda")


def test_eval_of_a_directory_names_what_to_give(tmp_path, capsys):
    code, err = run_main(["--eval", str(tmp_path)], capsys)
    assert code == 2 and err == (f"error: checkpoint {tmp_path} is a directory: name a file in "
                                 "it, its last.pt or best.pt")


def test_the_probe_asked_for_help_gives_its_usage_without_a_traceback():
    done = subprocess.run([sys.executable, "-m", "capsnet.run.probe", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("usage: python -m capsnet.run.probe SPEC")


def test_predict_and_analyze_explain_their_arguments(capsys):
    from capsnet import analyze, predict
    for command in (predict, analyze):
        with pytest.raises(SystemExit):
            command.main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--device {auto,cpu,cuda} where the model runs" in text
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    assert "CHECKPOINT IMAGE [CHECKPOINT IMAGE" not in capsys.readouterr().out
