"""Ship a run's model: `python -m capsnet.weights CHECKPOINT NAME [--out DIR]`.

Writes NAME.pt (the checkpoint's weights in float16), NAME-metrics.csv (the run's metrics.csv)
and NAME.json into DIR (default: capsnet/weights/, where `capsnet.pretrained(NAME)` finds them).
The float16 weights are tested on the whole test set first, and NAME.json records that accuracy
with the settings, the train.py command they stand for, the machine and the date.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import sys
from pathlib import Path
from typing import Any

from . import FOLDER

# Settings of where a run was made, not of what it learned: left out of the shipped settings.
PLACE = ("data_dir", "run_dir")


def command_of(config: dict[str, Any]) -> str:
    """The train.py command that gives these settings: every one that is not config.py's."""
    from config import Config, flag
    from ..cli import build
    cfg = build(Config, config)
    words = ["python", "train.py"]
    for name in Config.__dataclass_fields__:
        if name in PLACE or not cfg.given(name):
            continue
        value = getattr(cfg, name)
        if isinstance(value, bool):
            words.append(flag(name) if value else "--no-" + flag(name)[2:])
        else:
            words += [flag(name), str(value)]
    return " ".join(words)


def ship(checkpoint_path: str, name: str, out: Path, device: str) -> dict[str, Any]:
    """Write NAME.pt, NAME-metrics.csv and NAME.json into `out`; return the record."""
    import torch
    from ..cli import device_name, resolve_device
    from ..errors import UserError
    from ..run.rundir import RunDir
    from ..run.runner import evaluate_run
    from ..run.storage import load_checkpoint, make_dir, save_weights, write_file
    if not name.replace("-", "").isalnum():
        raise UserError(f"the name {name!r} is not allowed: use letters, digits and '-'")
    checkpoint = load_checkpoint(checkpoint_path)
    run = Path(checkpoint_path).parent
    if Path(checkpoint_path).name == "best.pt" and not checkpoint["config"].get(
            "validation_samples"):
        raise UserError(f"{checkpoint_path} was chosen on the test set (its run has no "
                        "--validation-samples), so its test accuracy is not a fair one: ship "
                        f"{run / 'last.pt'}")
    if not (run / "metrics.csv").is_file():
        raise UserError(f"{run / 'metrics.csv'} does not exist: the checkpoint's run directory "
                        "must hold its metrics.csv, shipped beside the weights")
    rows = [row for row in RunDir(run).read_metrics() if int(row["epoch"]) <= checkpoint["epoch"]]
    config = {k: v for k, v in checkpoint["config"].items() if k not in PLACE}
    make_dir(out)
    weights, curve = out / f"{name}.pt", out / f"{name}-metrics.csv"
    try:
        save_weights(weights, {**checkpoint, "config": config})
        text = io.StringIO()
        writer = csv.DictWriter(text, list(rows[0]) if rows else ["epoch"])
        writer.writeheader()
        writer.writerows(rows)
        write_file(curve, text.getvalue().encode())
        evaluation = evaluate_run([str(weights)], {"device": device}, report=False)
    except BaseException:
        weights.unlink(missing_ok=True)  # no half-shipped model: nothing without its record
        curve.unlink(missing_ok=True)
        raise
    record = {
        "name": name, "file": weights.name, "bytes": weights.stat().st_size,
        "dataset": config["dataset"], "tested": evaluation.tested,
        "test_accuracy": round(evaluation.summary["accuracy"], 2),
        "test_loss": round(evaluation.summary["loss"], 5),
        "epoch": checkpoint["epoch"],
        "selected": ("the best validation epoch" if Path(checkpoint_path).name == "best.pt"
                     else "the last epoch"),
        "parameters": sum(v.numel() for v in checkpoint["model"].values()),
        "command": command_of(config), "settings": config,
        "trained_seconds": round(sum(float(row["seconds"]) for row in rows)),
        "machine": device_name(resolve_device("cpu")), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "metrics": curve.name,
        "note": "test_accuracy is of the float16 weights of this file, tested in float32",
    }
    write_file(out / f"{name}.json", (json.dumps(record, indent=2) + "\n").encode())
    return record


def main(argv: list[str] | None = None) -> int:
    from config import DEVICES
    from ..cli import ArgumentParser, exit_status
    parser = ArgumentParser(prog="python -m capsnet.weights", description=__doc__)
    parser.add_argument("checkpoint", help="a run's last.pt (or best.pt with a validation split)")
    parser.add_argument("name", help="the model's name, as capsnet.pretrained(NAME) takes it")
    parser.add_argument("--out", type=Path, default=FOLDER, metavar="DIR",
                        help="where to write (default: %(default)s)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to test the weights (default: %(default)s)")
    args = parser.parse_args(argv)

    def work() -> None:
        record = ship(args.checkpoint, args.name, args.out, args.device)
        print(f"{args.out / record['file']}: {record['bytes'] / 2 ** 20:.1f} MiB, test accuracy "
              f"{record['test_accuracy']:.2f}% on {record['tested']} (epoch {record['epoch']}); "
              f"capsnet.pretrained({args.name!r}) loads it")
    return exit_status(work)


if __name__ == "__main__":
    sys.exit(main())
