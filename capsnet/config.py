"""The settings of a run: `Config`, one field per flag of train.py (`data_dir` -> `--data-dir`,
booleans also as `--no-...`) with its help text and the package's default, its checks, and the
named presets (--preset). The repository's config.py holds the values a researcher edits:
`values_in(path)` reads them, refusing a name or type that Config does not have.
"""
from __future__ import annotations

import difflib
import math
import os
import runpy
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .cli import DATA_DIR_ENV, flag
from .data.datasets import DATASETS
from .errors import UserError
from .loss import SCORE_LOSSES
from .model import PRIMARY_NORMS, RECIPES
from .networks import MODELS
from .routing import ROUTINGS

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
# torch.compile's modes; reduce-overhead and max-autotune capture CUDA graphs, which replay one
# shape: every batch of a pass has batch_size examples (capsnet.data.Sample).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def routings_with(field: str) -> str:
    """The --routing flags of the routings whose ROUTINGS entry has `field` true."""
    return ", ".join(f"--routing {r.name}" for r in ROUTINGS.values() if getattr(r, field))


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A Config field with its --help text (and allowed values, if any)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Config:
    # The experiment
    epochs: int = setting(50, "passes over the training set")
    batch_size: int = setting(128, "images per batch")
    lr: float = setting(1e-3, "Adam learning rate")
    lr_decay: float = setting(0.96, "learning-rate decay factor per lr_decay_steps (1: none)")
    lr_decay_steps: int = setting(2000, "optimizer steps over which the rate decays by lr_decay")
    dataset: str = setting("mnist", "dataset to train on (docs/datasets.md)", tuple(DATASETS))
    train_samples: int = setting(0, "train on the first N training images (0: all)")
    test_samples: int = setting(0, "test on the first N test images (0: all)")
    validation_samples: int = setting(0, "hold out the first N training images as a validation "
                                      "split, never trained on; best.pt is then the best "
                                      "validation epoch (the authors' code holds out 10,000)")
    shift: int = setting(2, "random shift of training images, in pixels, with zero padding")
    crop: int = setting(0, "random crop x crop crops in training, the centre crop at test "
                        "(0: none)")
    model: str = setting("capsnet", "capsnet, or baseline: the paper's CNN baseline "
                         "(docs/models.md)", tuple(MODELS))
    recipe: str = setting("paper", "paper: as the paper's text says; official: as the authors' "
                          "released code does (CapsNet: margin loss halved and averaged over "
                          "classes, PrimaryCaps conv/32, digit-capsule bias, its initial weights; "
                          "the baseline: their CNN)", RECIPES)
    conv1_channels: int = setting(256, "channels of the first convolution")
    primary_types: int = setting(32, "primary capsule types (channels of PrimaryCaps / their "
                                 "dimension)")
    primary_dim: int = setting(8, "dimensions of a primary capsule")
    class_dim: int = setting(16, "dimensions of a class (digit) capsule")
    primary_norm: str = setting("squash", "primary capsules squashed (eq. 1) or layer-norm'd "
                                "over their dimensions with a learned gain and bias (Tsai et al. "
                                "2020)", PRIMARY_NORMS)
    routing: str = setting("dynamic", "how primary capsules route to the class capsules: "
                           "dynamic (the paper's Procedure 1), self-attention (Efficient-CapsNet's, "
                           "not iterated), uniform (every c_ij = 1/classes: the control), "
                           "attention (inverted dot-product attention, Tsai et al. 2020), em "
                           "(EM routing of matrix capsules, Hinton et al. 2018) (docs/models.md)",
                           tuple(ROUTINGS))
    routing_iterations: int = setting(3, "routing iterations (--routing dynamic, attention or em)")
    leaky_routing: bool = setting(False, "a none-of-the-above output in the routing softmax "
                                  "(its logit fixed at zero), so a primary capsule can route to "
                                  "no class (--routing dynamic)")
    detach_routing: bool = setting(False, "stop gradients through all but the last routing "
                                   "iteration (--routing dynamic)")
    digit_bias: bool = setting(False, "add a bias to the digit capsules (+160 parameters)")
    score_loss: str = setting("margin", "the loss on the class scores: margin (the paper's "
                              "eq. 4, with m+, m- and lambda below), spread (Matrix capsules' "
                              "sum over wrong classes of max(0, m - (a_t - a_i))^2, m rising "
                              "linearly from 0.2 to 0.9 over the run) or cross-entropy (softmax "
                              "of the class logits: --routing attention, as its authors train "
                              "it; docs/models.md)", SCORE_LOSSES)
    m_plus: float = setting(0.9, "margin loss m+")
    m_minus: float = setting(0.1, "margin loss m-")
    lambda_absent: float = setting(0.5, "margin loss down-weighting of absent classes (lambda)")
    reconstruction_weight: float = setting(0.0005, "weight of the reconstruction sum of squares")
    average_from: int = setting(0, "from this epoch on, test, save and ship the average of the "
                                "weights at each epoch's end (stochastic weight averaging; "
                                "training is unchanged; 0: off)")
    stop_at_accuracy: float = setting(0.0, "stop after the first epoch whose selection accuracy "
                                      "(validation, else test) reaches this percentage (0: "
                                      "never; the paper's affNIST protocol: 99.23)")
    seed: int = setting(0, "random seed for weights, shuffling and shifts")
    # The baseline (--model baseline) and the folder dataset
    baseline_channels: str = setting("", "the baseline's convolution channels, comma-separated "
                                     "(empty: the recipe's, paper 256,256,128; official 512,256)")
    baseline_hidden: str = setting("", "the baseline's fully connected widths, comma-separated "
                                   "(empty: the recipe's, paper 328,192; official 1024)")
    dropout: float = setting(0.5, "dropout before the baseline's logits (paper recipe)")
    image_size: int = setting(28, "side the folder dataset's images are resized to")
    # How the run computes (none changes what it learns)
    fast_kernels: bool = setting(True, "CapsNet's faster kernels: conv1 and PrimaryCaps over DFTs "
                                 "on the CPU, routing with a hand-written backward; each is "
                                 "checked against the code as written at the start, and a layer "
                                 "whose fast form differs runs as written (the first lines say "
                                 "so). Off (--no-fast-kernels): every layer as written in "
                                 "capsnet/model.py and capsnet/routing, left to autograd")
    device: str = setting("auto", "where to train: auto picks cuda when there is a GPU", DEVICES)
    precision: str = setting("auto", "auto: bf16 where the device has bf16 matrix units (a CPU "
                             "with amx_bf16 or avx512_bf16, a CUDA GPU with bf16), else fp32; "
                             "fp32; tf32 (tensor-core float32 on CUDA); bf16 (convolutions and "
                             "matrix products in bfloat16, routing and losses in float32)",
                             PRECISIONS)
    micro_batch: int = setting(0, "compute each batch in parts of at most N images, their "
                               "gradients summed: the same step in less memory (0: automatic, "
                               "the whole batch where the memory check finds room for it, else "
                               "the largest parts that fit; under torchrun, per process)")
    compile: bool = setting(False, "torch.compile the model (falls back to eager with a warning)")
    compile_mode: str = setting("default", "torch.compile mode with --compile: reduce-overhead "
                                "and max-autotune capture CUDA graphs (every batch has "
                                "--batch-size examples: see docs/speed.md)", COMPILE_MODES)
    deterministic: bool = setting(False, "deterministic kernels on CUDA (cuDNN without its "
                                  "benchmark, no atomic accumulation), so that a resumed run "
                                  "repeats the uninterrupted one bit for bit there as on the "
                                  "CPU; slower")
    threads: int = setting(0, "CPU threads for PyTorch (0: PyTorch's default)")
    download: bool = setting(True, "download the dataset when its files are missing")
    data_dir: str = setting("data",
                            "dataset root holding MNIST/raw/, cifar-10-batches-py/, SVHN/ ..., or "
                            "train/ and test/ for folder (env CAPSNET_DATA_DIR)")
    memory_check: bool = setting(True,
                                 "before training, know a step's memory and compute a batch "
                                 "that does not fit in micro-batches that do (stop where not "
                                 "one image fits): on a CPU a count of a step's allocations where "
                                 "it stays below the free memory, else (and on a GPU) steps "
                                 "measured in a separate process (env CAPSNET_MEMORY_CHECK=0: "
                                 "off)")
    # Where the run goes, and the dashboard
    run_dir: str = setting("", "directory for metrics.csv and checkpoints (empty: runs/<timestamp>)")
    log_every: int = setting(20, "batches between progress-bar updates")
    visdom: bool = setting(True, "stream metrics to a live Visdom dashboard")
    visdom_host: str = setting("127.0.0.1", "dashboard address; any other than loopback is "
                               "reachable from other machines (VISDOM_USERNAME and "
                               "VISDOM_PASSWORD enable a login)")
    visdom_port: int = setting(8097, "dashboard port")
    visdom_env: str = setting("", "Visdom environment (empty: the run directory's name)")
    visdom_every: int = setting(10, "batches between live dashboard updates")
    visdom_figures_every: int = setting(1, "epochs between the live figures (reconstruction by "
                                        "mask, capsule dimensions, routing); 0: none")
    visdom_autostart: bool = setting(True, "start a Visdom server in the background when none "
                                     "answers at host:port")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["choices"] and value not in f.metadata["choices"]:
                fail(f.name, value, "one of " + ", ".join(f.metadata["choices"]))
        at_least(self, 1, "epochs", "batch_size", "routing_iterations", "lr_decay_steps",
                 "image_size", "conv1_channels", "primary_types", "primary_dim", "class_dim",
                 "log_every", "visdom_every", "visdom_port")
        if self.visdom_port > 65535:
            fail("visdom_port", self.visdom_port, "a port from 1 to 65535")
        if not 0 <= self.stop_at_accuracy <= 100:
            fail("stop_at_accuracy", self.stop_at_accuracy, "a percentage from 0 to 100")
        at_least(self, 0, "train_samples", "test_samples", "validation_samples", "shift", "crop",
                 "threads", "seed", "visdom_figures_every", "reconstruction_weight",
                 "lambda_absent", "micro_batch")
        if not 0 <= self.dropout < 1:
            fail("dropout", self.dropout, "a number in [0, 1)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            fail("lr", self.lr, "a number > 0")
        if not 0 <= self.average_from <= self.epochs:
            fail("average_from", self.average_from, f"an epoch from 1 to --epochs "
                 f"({self.epochs}), or 0: no average")
        if not 0 < self.lr_decay <= 1:
            fail("lr_decay", self.lr_decay, "a number in (0, 1]")
        if not 0 <= self.m_minus < self.m_plus <= 1:
            fail("m_plus", self.m_plus, f"0 <= m_minus ({self.m_minus}) < m_plus <= 1")
        self.check_routing_options()
        self.check_score_loss()

    def given(self, name: str) -> bool:
        """Whether a setting has a value other than its default (a flag given at its default
        cannot be told from no flag)."""
        return getattr(self, name) != Config.__dataclass_fields__[name].default

    def check_score_loss(self) -> None:
        """The spread loss and the cross-entropy are CapsNet's and have no m+, m- or lambda;
        the cross-entropy needs a routing's logits."""
        if self.score_loss == "margin":
            return
        if self.model != "capsnet":
            raise UserError(f"--score-loss {self.score_loss} does not apply to --model "
                            f"{self.model}, whose loss is the cross-entropy: leave it out")
        if self.score_loss == "cross-entropy" and not ROUTINGS[self.routing].logits:
            raise UserError(f"--score-loss cross-entropy needs class logits, which --routing "
                            f"{self.routing} has not (its scores are lengths); it applies to "
                            + routings_with("logits"))
        for name in ("m_plus", "m_minus", "lambda_absent"):
            if self.given(name):
                raise UserError(f"{flag(name)} does not apply to --score-loss {self.score_loss}: "
                                "leave it out (it is an option of --score-loss margin)")

    def check_routing_options(self) -> None:
        """Options of one routing are refused with another (a value other than the default)."""
        entry = ROUTINGS[self.routing]
        options = {"leaky_routing": "leaky", "routing_iterations": "iterates",
                   "detach_routing": "detaches", "digit_bias": "bias"}  # flag -> Routing field
        for name, takes in options.items():
            if not getattr(entry, takes) and self.given(name):
                raise UserError(f"{flag(name)} does not apply to --routing {self.routing}: leave "
                                "it out (it is an option of " + routings_with(takes) + ")")
        if self.primary_norm == "layer-norm" and entry.lengths:
            raise UserError(f"--primary-norm layer-norm does not apply to --routing "
                            f"{self.routing}, which reads the primary capsules' lengths as "
                            "probabilities (squashed ones, below 1): use --primary-norm squash")
        if self.recipe == "official" and self.model == "capsnet" and not entry.bias:
            raise UserError(f"--recipe official does not apply to --routing {self.routing}: its "
                            "digit-capsule bias is added before squash, which this routing has "
                            "not; use --recipe paper")


# --preset NAME: named settings in one flag (the paper's for a dataset, or the shipped MNIST
# model's schedule); flags given beside it win.
PRESETS: dict[str, dict[str, Any]] = {
    # The shipped MNIST model's schedule (docs/pretrained.md): the paper's decay (x0.96 per 2,000
    # steps) leaves the rate at 0.9e-3 after 14 epochs; this one, x0.9 per epoch of 469 batches
    # of 128 (the Keras reimplementation's decay), anneals it to 1.5e-5 within 40 epochs, about
    # two hours in bf16 on a 2-core CPU with bf16 units.
    "mnist-cpu": {"dataset": "mnist", "epochs": 40, "lr_decay": 0.9, "lr_decay_steps": 469},
    "svhn": {"dataset": "svhn", "conv1_channels": 64, "primary_types": 16, "primary_dim": 6,
             "class_dim": 8},  # the paper's smaller SVHN network
    "cifar10": {"dataset": "cifar10", "crop": 24, "shift": 0, "primary_types": 64,
                "leaky_routing": True},  # one model of the paper's ensemble of 7
    "smallnorb": {"dataset": "smallnorb", "crop": 32, "shift": 0},  # the authors' crops
    # The baseline's widths for the paper's other comparisons (docs/models.md): 24,555,535
    # parameters on MultiMNIST's 36x36 (the paper: 24.56M); 13,536,384 on 40x40, near CapsNet's
    # 13,475,648 there (the paper: "a similar number of parameters").
    "baseline-multimnist": {"model": "baseline", "dataset": "multimnist",
                            "baseline_hidden": "133,192"},
    "baseline-affnist": {"model": "baseline", "dataset": "mnist40", "baseline_hidden": "54,192"},
}


def environment_defaults() -> dict[str, Any]:
    """The defaults the environment gives, read when a run's settings are made (never at
    import): data_dir from CAPSNET_DATA_DIR, memory_check off where CAPSNET_MEMORY_CHECK=0.
    They stand under a config file's values and the flags."""
    values: dict[str, Any] = {}
    if os.environ.get(DATA_DIR_ENV):
        values["data_dir"] = os.environ[DATA_DIR_ENV]
    if os.environ.get("CAPSNET_MEMORY_CHECK") == "0":
        values["memory_check"] = False
    return values


def fail(name: str, value: Any, allowed: str) -> None:
    raise UserError(f"{flag(name)} {value!r} is not allowed: use {allowed}")


def at_least(cfg: Config, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= minimum):
            fail(name, value, f"a number >= {minimum}")


def values_in(path: str | Path) -> dict[str, Any]:
    """The settings a config file (the repository's config.py, `name: type = value` lines) gives
    other values than the package's defaults. A name that is not a setting, a value of another
    type, or a file that does not run is refused in one line."""
    path = Path(path)
    try:
        namespace = runpy.run_path(str(path))
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror})") from None
    except Exception as error:  # the file is the user's code: any error is theirs to fix
        raise UserError(f"{path} does not run: {type(error).__name__}: {error}") from None
    kinds = typing.get_type_hints(Config)
    values = {name: value for name, value in namespace.items()
              if not name.startswith("__") and not isinstance(value, types.ModuleType)}
    for name, value in values.items():
        if name not in kinds:
            close = difflib.get_close_matches(name, kinds, n=1)
            raise UserError(f"{path}: {name!r} is not a setting"
                            + (f" (did you mean {close[0]!r}?)" if close else "")
                            + "; the settings are train.py's flags (python train.py --help)")
        if not of_kind(value, kinds[name]):
            raise UserError(f"{path}: {name} = {value!r} is not allowed: use "
                            f"{KIND_WORDS[kinds[name]]}")
    return {name: value for name, value in values.items()
            if value != Config.__dataclass_fields__[name].default}


KIND_WORDS = {int: "a whole number", float: "a number", str: "a string in quotes",
              bool: "True or False"}


def of_kind(value: Any, kind: type) -> bool:
    """Whether a config file's value fits a setting's type (an int for a float too)."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
