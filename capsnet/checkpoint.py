"""Checkpoints written atomically, so an interrupted save never destroys the previous one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

REQUIRED = ("model", "model_args", "optimizer", "scheduler", "epoch", "step", "config")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, or raise UserError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist (expected a last.pt or best.pt file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged files
        raise UserError(f"checkpoint {path} is not a readable capsnet checkpoint "
                        f"({type(error).__name__})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED):
        raise UserError(f"checkpoint {path} is not a capsnet checkpoint "
                        f"(needs the keys {', '.join(REQUIRED)})")
    return payload
