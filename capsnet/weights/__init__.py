"""The package's trained models, shipped in this folder: `capsnet.pretrained("mnist")`.

A model NAME is three files here: NAME.pt (the weights in float16, with the model's arguments,
settings and classes, and a digest), NAME.json (how it was trained and what it scores: its
`test_accuracy` is of the float16 weights, tested in float32 on the whole test set) and
NAME-metrics.csv (its run's curve, a row per epoch). `python -m capsnet.weights` makes them from
a run's checkpoint.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError

FOLDER = Path(__file__).parent


def names(folder: Path = FOLDER) -> list[str]:
    """The models in `folder`: every NAME with its NAME.json."""
    return sorted(path.stem for path in folder.glob("*.json"))


def path_of(name: str, folder: Path = FOLDER) -> Path:
    """NAME.pt of a known model; an unknown name is refused in one line listing the known."""
    if name not in names(folder):
        raise UserError(f"no trained model is named {name!r}: use one of "
                        f"{', '.join(names(folder)) or '(none in ' + str(folder) + ')'}")
    return folder / f"{name}.pt"


def record_of(name: str, folder: Path = FOLDER) -> dict[str, Any]:
    """NAME.json: the settings, commands, machine, date and test accuracy of a model."""
    path_of(name, folder)
    return json.loads((folder / f"{name}.json").read_text())


def model_of(checkpoint: dict[str, Any], device: torch.device) -> nn.Module:
    """A loaded checkpoint's (or trained-weights file's) model, in eval mode on `device`, each
    fast form checked against the code as written (a line on stderr for one set aside)."""
    from ..kernels import checked
    from ..networks import network_of
    from ..run.storage import load_state
    model = network_of(checkpoint["config"]).make(**checkpoint["model_args"])
    load_state(model, checkpoint["model"], "model")
    for line in checked(model, checkpoint["model_args"], device).warnings("running", ""):
        print(line, file=sys.stderr, flush=True)
    return model.to(device).eval()


def pretrained(name: str = "mnist", device: str | torch.device = "cpu",
               folder: Path = FOLDER) -> nn.Module:
    """The trained model `name` in eval mode on `device`, in float32: for MNIST a CapsNet taking
    (B, 1, 28, 28) images in [0, 1]; `model(images).scores` are the (B, 10) class scores."""
    from ..run.storage import load_checkpoint
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"pretrained({name!r}, device={str(device)!r}): no CUDA GPU is available "
                        "here; use device='cpu'")
    return model_of(load_checkpoint(path_of(name, folder), weights=True), device)
