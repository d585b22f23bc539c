"""Bad input: one line naming what is wrong and what is allowed, exit status 2, no traceback."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from conftest import run_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "-1"], "--epochs -1 is not allowed: use a number >= 1"),
    (["--batch-size", "0"], "--batch-size 0 is not allowed: use a number >= 1"),
    (["--routing-iterations", "0"], "--routing-iterations 0 is not allowed"),
    (["--lr", "0"], "--lr 0.0 is not allowed: use a number > 0"),
    (["--lr-decay", "1.5"], "--lr-decay 1.5 is not allowed: use a number in (0, 1]"),
    (["--m-minus", "0.95"], "--m-plus 0.9 is not allowed"),
    (["--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
])
def test_bad_settings(flags, expected, quick_args, capsys):
    code, err = run_main(quick_args + flags, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu(quick_args, capsys):
    code, err = run_main(quick_args + ["--device", "cuda"], capsys)
    assert code == 2 and err == ("error: --device cuda: no CUDA GPU is available here; "
                                 "use --device cpu or auto")


def test_missing_dataset(quick_args, tmp_path, capsys):
    code, err = run_main(quick_args + ["--data-dir", str(tmp_path / "nothing")], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "train-images-idx3-ubyte" in err and str(tmp_path / "nothing" / "MNIST" / "raw") in err
    assert not (tmp_path / "run").exists()  # a run that could not start leaves no directory


@pytest.mark.parametrize("action", ["--resume", "--eval"])
def test_missing_checkpoint(action, quick_args, tmp_path, capsys):
    code, err = run_main(quick_args + [action, str(tmp_path / "gone.pt")], capsys)
    assert code == 2 and err == f"error: checkpoint {tmp_path / 'gone.pt'} does not exist " \
                                "(expected a last.pt or best.pt file)"


@pytest.mark.parametrize("content", [b"garbage", b""])
@pytest.mark.parametrize("action", ["--resume", "--eval"])
def test_corrupt_checkpoint(content, action, quick_args, tmp_path, capsys):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    code, err = run_main(quick_args + [action, str(path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"checkpoint {path} is not a readable capsnet checkpoint" in err
    assert path.read_bytes() == content  # nothing overwritten


def test_foreign_checkpoint(quick_args, tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    code, err = run_main(quick_args + ["--eval", str(path)], capsys)
    assert code == 2 and "is not a capsnet checkpoint of this version (it lacks model," in err


def test_run_dir_of_another_run_is_never_overwritten(quick_args, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch\n1\n")
    code, err = run_main(quick_args, capsys)
    assert code == 2 and f"--run-dir {run} already holds files" in err
    assert (run / "metrics.csv").read_text() == "epoch\n1\n"


def test_the_command_line_reports_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "train.py", "--batch-size", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "error: --batch-size 0 is not allowed: use a number >= 1\n"


def test_a_command_ends_with_its_own_exit_status_and_all_it_wrote(tmp_path):
    """Commands end through cli.exit_with, which freezes the garbage collector first."""
    result = subprocess.run([sys.executable, "-m", "capsnet.predict", "--pretrained", "mnist",
                             str(tmp_path / "missing.png")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-2:] == [
        f"error: {tmp_path / 'missing.png'} is not a readable image (FileNotFoundError)",
        "error: 1 of 1 images could not be classified (see above)"]


def test_help_lists_every_setting_with_its_default(capsys):
    from dataclasses import fields

    from capsnet.config import Config
    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = capsys.readouterr().out
    for f in fields(Config):
        assert "--" + f.name.replace("_", "-") in out
    assert "(default: 128)" in out and "--no-visdom" in out and "--train-samples" in out


def test_the_settings_page_documents_every_setting_with_its_default():
    from dataclasses import fields

    from capsnet.config import Config
    page = (ROOT / "docs" / "settings.md").read_text()
    for f in fields(Config):
        # without $CAPSNET_DATA_DIR and $CAPSNET_MEMORY_CHECK (the suite sets the latter)
        default = {"data_dir": "'data'", "memory_check": "True"}.get(f.name, repr(f.default))
        assert f"| `--{f.name.replace('_', '-')}` | `{default}` |" in page, f.name


def test_readme_is_short_and_every_page_it_or_the_docs_link_exists():
    import re
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 15 * 1024
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    linked = set()
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith("http"):
                continue
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.name} links {target}, which does not exist"
            linked.add(path)
    assert all(page.resolve() in linked for page in pages[1:])  # every docs page is reachable


def test_an_abbreviated_flag_is_refused_rather_than_guessed(quick_args, capsys):
    code, err = run_main(quick_args + ["--epoch", "3"], capsys)
    assert code == 2 and err == "error: unrecognized arguments: --epoch 3 (see train.py --help)"


@pytest.mark.parametrize("flags, expected", [
    (["--crop", "16", "--memory-check"],
     "error: --crop 16 is too small for capsnet: its inputs must be at least 17x17"),
    (["--dataset", "folder", "--image-size", "16"],
     "error: --image-size 16 is too small for capsnet: its inputs must be at least 17x17"),
])
def test_images_too_small_for_capsnet_are_one_line_before_any_data_is_read(
        flags, expected, quick_args, tmp_path, capsys):
    empty = tmp_path / "empty"  # no dataset here: reading one would fail differently
    empty.mkdir()
    args = quick_args + ["--data-dir", str(empty)] + flags
    code, err = run_main(args, capsys)
    assert code == 2 and err == expected


@pytest.mark.parametrize("action", ["--resume", "--eval"])
def test_a_checkpoint_of_another_dataset_is_refused_before_any_download(
        action, tiny_checkpoints, tmp_path, capsys, monkeypatch):
    import shutil

    from capsnet.data import splits
    monkeypatch.setattr(splits, "fetch", lambda *args: pytest.fail("downloaded"))
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoints["capsnet"].parent, run)
    code, err = run_main([action, str(run / "last.pt"), "--dataset", "cifar10", "--download",
                          "--data-dir", str(tmp_path / "nothing-here")], capsys)
    assert code == 2
    assert err.startswith("error: the checkpoint was trained on mnist (classes 0, 1, 2, 3, 4, 5, "
                          "6, 7, 8, 9), not on cifar10;")
    assert err.endswith("pass --allow-other-dataset to use it anyway")


def test_a_resumed_run_takes_the_machine_settings_of_this_invocation(
        tiny_checkpoints, data_root, tmp_path, capsys):
    """compile and the memory check saved with the run are not taken: the suite's environment
    says CAPSNET_MEMORY_CHECK=0, and no --compile is given."""
    import shutil

    from capsnet.run.storage import load_checkpoint, save_checkpoint
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoints["capsnet"].parent, run)
    checkpoint = load_checkpoint(run / "last.pt")
    checkpoint.pop("digest", None)
    checkpoint["config"].update(compile=True, compile_mode="max-autotune", memory_check=True,
                                threads=7, precision="bf16")
    save_checkpoint(run / "last.pt", checkpoint)
    code = train.main(["--resume", str(run / "last.pt"), "--epochs", "2",
                       "--data-dir", str(data_root)])
    out = capsys.readouterr().out
    assert code == 0
    assert "in bf16" in out and ", eager;" in out  # the run's precision, no compile here
    assert "a training step needs about" not in out  # no memory check
    import json
    saved = json.loads((run / "config.json").read_text())
    assert (saved["compile"], saved["memory_check"], saved["threads"]) == (False, False, 0)


def test_train_main_gives_back_the_sigterm_handler_it_found(quick_args, tmp_path, capsys):
    import signal

    def mine(number, frame):
        pass
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert train.main(quick_args) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        code, _ = run_main(["--eval", str(tmp_path / "missing.pt")], capsys)
        assert code == 2 and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_bf16_on_a_cpu_names_its_units_or_warns_that_it_has_none(monkeypatch):
    from capsnet import cli
    cpu = torch.device("cpu")
    monkeypatch.setattr(cli, "bf16_units", lambda: ["avx512_bf16"])
    assert cli.precision_label("bf16", cpu) == "bf16 (on avx512_bf16)"
    assert "(avx512_bf16)" in cli.device_name(cpu)
    monkeypatch.setattr(cli, "bf16_units", lambda: [])
    assert "warning: this CPU has no bf16 matrix units" in cli.precision_label("bf16", cpu)
    assert "(no bf16 units)" in cli.device_name(cpu)
    assert cli.precision_label("fp32", cpu) == "fp32"
    assert cli.precision_label("bf16", torch.device("cuda")) == "bf16"
