"""What earlier versions of the package wrote, read in one place.

Every file a run or `python -m capsnet.weights` writes carries its format under "format": a
checkpoint CHECKPOINT_FORMAT, a trained-weights file WEIGHTS_FORMAT; a checkpoint without one was
written before formats were numbered (format 1). `upgraded` brings a loaded payload of an earlier
format to this version's, so that nothing else reads earlier names. metrics.csv carries no format:
its earlier columns are known by their names (METRICS_COLUMNS).
"""
from __future__ import annotations

from typing import Any

CHECKPOINT_FORMAT = "capsnet-checkpoint-2"
WEIGHTS_FORMAT = "capsnet-weights-1"
# Structure arguments that earlier payloads lack, by model, with the value they were made with
# (--routing and --primary-norm came later).
EARLIER_STRUCTURE = {"capsnet": {"routing": "dynamic", "primary_norm": "squash"}}
EARLIER_METERS = {"margin": "score_loss"}  # a format-1 checkpoint's meter names, now
METRICS_COLUMNS = {f"{part}_margin": f"{part}_score_loss"  # an earlier metrics.csv's, now
                   for part in ("train", "test", "validation")}


def upgraded(payload: dict[str, Any]) -> dict[str, Any]:
    """A loaded checkpoint or trained-weights file in this version's format."""
    model = payload["config"].get("model", "capsnet")
    payload["model_args"] = {**EARLIER_STRUCTURE.get(model, {}), **payload["model_args"]}
    if payload.get("format") is None:  # a checkpoint of format 1
        payload["meters"] = [{EARLIER_METERS.get(name, name): state for name, state in part.items()}
                             for part in payload["meters"]]
        payload["format"] = CHECKPOINT_FORMAT
    return payload


def metrics_row(row: dict[str, str]) -> dict[str, str]:
    """A metrics.csv row with an earlier version's columns under their names now."""
    return {METRICS_COLUMNS.get(name, name): value for name, value in row.items()}
