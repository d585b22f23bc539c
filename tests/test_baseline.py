"""The paper's CNN baseline (--model baseline) and model selection on a held-out validation split."""
import csv

import pytest
import torch

import train
from capsnet.baseline import Baseline, BaselineLoss, BaselineOutput
from capsnet.run.build import build_run
from capsnet.run.storage import load_checkpoint
from capsnet.networks import MODELS
from capsnet.config import PRESETS, Config
from conftest import run_main, write_dataset

SMALL = ["--baseline-channels", "8,8,4", "--baseline-hidden", "16,8"]  # quick, the same layers


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(c_in: int, c_out: int) -> int:
    return c_in * c_out * 25 + c_out  # 5x5 weights and a bias


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def paper(size: int, first: int = 328) -> int:
    """Convolutions 256, 256, 128 keeping the size; dense first, 192, then the 10 logits."""
    return (conv(1, 256) + conv(256, 256) + conv(256, 128) + dense(128 * size * size, first)
            + dense(first, 192) + dense(192, 10))


def test_the_parameter_counts_are_the_papers():
    assert paper(28) == 35_445_522  # the paper's 35.4M
    assert parameters(Baseline(image_size=28)) == paper(28)
    assert parameters(Baseline(image_size=36)) == paper(36) == 56_941_330
    assert parameters(Baseline(image_size=40)) == paper(40) == 69_704_466
    # the presets: MultiMNIST's 24.56M, and CapsNet's 13,475,648 at 40x40 for affNIST
    for preset, size, count in (("baseline-multimnist", 36, 24_555_535),
                                ("baseline-affnist", 40, 13_536_384)):
        first = int(PRESETS[preset]["baseline_hidden"].split(",")[0])
        assert paper(size, first) == count
        cfg = Config(**PRESETS[preset])
        args = MODELS["baseline"].args(cfg, 2 if preset == "baseline-multimnist" else 1)
        assert parameters(MODELS["baseline"].make(in_channels=1, image_size=size,
                                                  num_classes=10, **args)) == count
    # the released code's: 512 and 256 channels each pooled 2x2 (28 -> 14 -> 7), 1024, logits
    official = conv(1, 512) + conv(512, 256) + dense(256 * 7 * 7, 1024) + dense(1024, 10)
    assert parameters(Baseline(recipe="official")) == official == 16_146_698
    assert Config.__dataclass_fields__["model"].metadata["choices"] == tuple(MODELS)


def test_the_baseline_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    one = BaselineOutput(logits.softmax(dim=1), logits)
    parts = BaselineLoss().parts(None, torch.tensor([0, 2]), one)
    # -log softmax: example 0: log(e^2 + 2) - 2; example 1: log(1 + 2e) - 1
    expected = ((torch.log(torch.tensor(2.0).exp() + 2) - 2)
                + (torch.log(1 + 2 * torch.tensor(1.0).exp()) - 1)) / 2
    assert torch.isclose(parts.score_loss, expected) and parts.reconstruction == 0
    two = BaselineOutput(torch.sigmoid(logits), logits)
    parts = BaselineLoss().parts(None, torch.tensor([[0, 1], [1, 2]]), two)
    softplus = torch.nn.functional.softplus  # BCE: softplus(-z) if present, softplus(z) if not
    expected = ((softplus(-logits[0, :2]).sum() + softplus(logits[0, 2]))
                + (softplus(logits[1, 0]) + softplus(-logits[1, 1:]).sum())) / 2
    assert torch.isclose(parts.score_loss, expected)


@pytest.mark.parametrize("widths", ["x,1", "8,0", ""])
def test_bad_baseline_widths_are_one_line(quick_args, capsys, widths):
    code, err = run_main([*quick_args, "--model", "baseline", "--baseline-hidden", widths or ","],
                         capsys)
    assert code == 2 and err.startswith("error: --baseline-hidden must be positive integers")


def test_a_baseline_trains_resumes_and_is_evaluated(quick_args, tmp_path, capsys):
    args = [*quick_args, "--model", "baseline", *SMALL]
    code, err = run_main(args, capsys)
    assert code == 0, err
    run = tmp_path / "run"
    data = quick_args[quick_args.index("--data-dir") + 1]
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "2", "--data-dir", data]) == 0
    out = capsys.readouterr().out
    assert "capsnet: mnist, baseline," in out and "epoch 2/2" in out
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["model"] == "baseline"
    assert train.main(["--eval", str(run / "last.pt"), str(run / "best.pt"),
                       "--data-dir", data]) == 0
    assert "ensemble of 2" in capsys.readouterr().out
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train_reconstruction"]) for r in rows] == [0.0, 0.0]  # no decoder
    # a CapsNet checkpoint does not fit a baseline's flags, in one line
    code, err = run_main(["--eval", str(run / "last.pt"), "--model", "capsnet",
                          "--data-dir", data], capsys)
    assert code == 2 and "does not fit" in err and "\n" not in err
    from capsnet import analyze
    assert analyze.main([str(run / "last.pt")]) == 2
    assert "the figures are of capsules" in capsys.readouterr().err


def test_a_multimnist_baseline_predicts_two_digits(tmp_path, capsys):
    root = write_dataset(tmp_path / "data", train=64, test=32)
    code, err = run_main(["--dataset", "multimnist", "--model", "baseline", *SMALL,
                          "--data-dir", str(root), "--no-download", "--epochs", "1",
                          "--batch-size", "32", "--no-visdom",
                          "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 0, err
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["test_accuracy"]) <= float(row["test_at_least_one"])  # both digits, one


def test_the_validation_split_is_held_out_and_chooses_best_pt(data_root, tmp_path, capsys):
    cfg = Config(data_dir=str(data_root), download=False, validation_samples=16,
                 train_samples=40, memory_check=False)
    parts = build_run(cfg)
    held, trained = parts.validation_batches.split, parts.train_batches.split
    assert len(held) == 16 and len(trained) == 40
    everything = build_run(Config(data_dir=str(data_root), download=False,
                                  memory_check=False)).train_batches.split
    assert torch.equal(held.images, everything.images[:16])  # the first 16, as the authors do
    assert torch.equal(trained.images, everything.images[16:56])  # never any of those
    run = tmp_path / "run"
    args = ["--data-dir", str(data_root), "--no-download", "--epochs", "3", "--batch-size",
            "32", "--no-visdom", "--run-dir", str(run),
            "--validation-samples", "32", "--seed", "3"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    accuracies = [float(r["validation_accuracy"]) for r in rows]
    chosen = accuracies.index(max(accuracies)) + 1  # the first best epoch
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == chosen and best["best_accuracy"] == pytest.approx(max(accuracies),
                                                                              abs=1e-3)
    assert f"best validation accuracy {max(accuracies):.2f}% at epoch {chosen}" in out
    assert f"whose test accuracy is {float(rows[chosen - 1]['test_accuracy']):.2f}%" in out
    assert sum("validation loss" in line for line in out.splitlines()) == 3  # each epoch line
    code, err = run_main(["--resume", str(run / "last.pt"), "--epochs", "4",
                          "--validation-samples", "8", "--data-dir", str(data_root)], capsys)
    assert code == 2 and "--validation-samples 8 cannot apply to a resumed run" in err


def test_training_stops_at_the_first_epoch_that_reaches_the_accuracy(quick_args, tmp_path,
                                                                     capsys):
    args = [*quick_args, "--epochs", "6", "--validation-samples", "16", "--stop-at-accuracy",
            "1"]  # any accuracy above 1% stops after epoch 1
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "stopped: validation accuracy" in out and "--stop-at-accuracy 1 at epoch 1" in out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    data = quick_args[quick_args.index("--data-dir") + 1]
    code, err = run_main(["--resume", str(tmp_path / "run" / "last.pt"), "--data-dir", data],
                         capsys)
    assert code == 2 and "already reached --stop-at-accuracy 1" in err


def test_the_memory_check_measures_a_baseline_step():
    from capsnet.run import footprint
    from capsnet.run.build import model_args
    from test_experiments import noise_digits
    cfg = Config(model="baseline", batch_size=8)
    args = model_args(cfg, noise_digits(4))
    measured = footprint.measure(footprint.spec_of(cfg, args, 1, torch.device("cpu"), {}))
    # 35.4M parameters, their gradients and Adam's two moments: over 500 MB before any batch
    assert measured.fixed > 500 * 2 ** 20 and measured.per_example > 0


def test_the_dashboard_of_a_baseline_has_no_reconstruction_windows(server, quick_args):
    from visdom_server import client
    from test_dashboard import dashboard_args, traces
    args = dashboard_args([*quick_args, "--model", "baseline", *SMALL], server.port, "cnn",
                          epochs=1)
    assert train.main(args) == 0
    assert traces(server.port, "cnn", "loss")["test"] == [1.0]
    for name in ("images", "reconstructions", "by_mask", "perturbation", "routing"):
        assert not client(server.port, "cnn").win_exists(name, env="cnn"), name
    assert client(server.port, "cnn").win_exists("confusion", env="cnn")
