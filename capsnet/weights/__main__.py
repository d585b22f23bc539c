"""Ship a run's model: `python -m capsnet.weights CHECKPOINT NAME [--out DIR] [--command C]...`.

Writes NAME.pt (the checkpoint's weights in float16), NAME-metrics.csv (the run's metrics.csv)
and NAME.json into DIR (default: capsnet/weights/, where `capsnet.pretrained(NAME)` finds them).
The float16 weights are tested on the whole test set first, and NAME.json records that accuracy
with the settings, the train.py commands that made them, the machine and the date.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
from pathlib import Path
from typing import Any

from . import FOLDER


def command_of(config: dict[str, Any]) -> str:
    """The train.py command that gives these settings: every one that is not the package's
    default."""
    from ..config import Config
    from ..cli import build, command_line
    cfg = build(Config, config)
    return command_line({name: getattr(cfg, name) for name in Config.__dataclass_fields__
                         if cfg.given(name)})


def settings_of_commands(commands: list[str]) -> dict[str, Any]:
    """The settings a run gets from `commands`: a new run of the first, resumed by each later
    one (refused in one line if they are not train.py commands in that order)."""
    import dataclasses
    import shlex
    from ..config import Config
    from ..cli import resumed_settings
    from ..errors import UserError
    from ..run.runner import parse, settings_of
    cfg = None
    for k, command in enumerate(commands):
        words = shlex.split(command)
        if words[:2] != ["python", "train.py"]:
            raise UserError(f"--command {command!r} is not allowed: each is a "
                            "'python train.py ...' command")
        args = parse(words[2:])
        if args.eval or (args.resume is None) != (k == 0):
            raise UserError(f"--command {command!r} is not allowed: the first starts the run and "
                            "each later one resumes it (--resume)")
        cfg = (Config(**settings_of(args)) if cfg is None else
               resumed_settings(Config, dataclasses.asdict(cfg), settings_of(args)))
    return dataclasses.asdict(cfg) if cfg is not None else {}


def commands_of(checkpoint: dict[str, Any], given: list[str]) -> list[str]:
    """The train.py commands that made the checkpoint's run: `given` (checked against its
    settings), else those the checkpoint keeps, else (kept by none) the one its settings give."""
    from ..cli import MACHINE_SETTINGS, PLACE_SETTINGS
    from ..errors import UserError
    config = checkpoint["config"]
    if given:
        made = settings_of_commands(given)
        differ = [name for name in config if name in made and made[name] != config[name]
                  and name not in MACHINE_SETTINGS + PLACE_SETTINGS]
        if differ:
            raise UserError("the --command lines do not give the checkpoint's settings ("
                            + "; ".join(f"{name}: {made[name]!r} from them, "
                                        f"{config[name]!r} in the checkpoint" for name in differ)
                            + ")")
        return given
    if "commands" not in checkpoint:  # from a version that did not keep them
        return [command_of(config)]
    if checkpoint["commands"] is None:
        raise UserError("the run was resumed from a checkpoint that does not keep the commands "
                        "that made it: name them, in order, with --command")
    return checkpoint["commands"]


def selected(checkpoint: dict[str, Any], best: bool) -> str:
    """Which weights of the run a checkpoint holds, in words."""
    from ..averaging import Averaged
    epoch = "the best validation epoch" if best else "the last epoch"
    averaged = Averaged.of(checkpoint)
    return f"{averaged.describe()} ({epoch})" if averaged else epoch


def ship(checkpoint_path: str, name: str, out: Path, device: str,
         commands: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Write NAME.pt, NAME-metrics.csv and NAME.json into `out`; return the record. `commands`:
    the train.py commands that made the run, when its checkpoint does not keep them. A model
    already there is replaced only with `force`, and only once the new one passed its test.
    The checkpoint may be a shipped model (OTHER.pt beside its OTHER-metrics.csv and, for its
    commands, OTHER.json): the weights the device check brings back are shipped so."""
    import os

    import torch
    from ..cli import PLACE_SETTINGS, device_name, resolve_device
    from ..errors import UserError
    from ..run.rundir import read_rows
    from ..run.runner import evaluate_run
    from ..compat import WEIGHTS_FORMAT
    from ..run.storage import load_checkpoint, make_dir, save_weights, write_file
    if not name.replace("-", "").isalnum():
        raise UserError(f"the name {name!r} is not allowed: use letters, digits and '-'")
    weights, curve = out / f"{name}.pt", out / f"{name}-metrics.csv"
    existing = [path for path in (weights, curve, out / f"{name}.json") if path.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} exists: pass --force to replace the model {name!r} (it "
                        "is replaced only once the new one has passed its test)")
    checkpoint = load_checkpoint(checkpoint_path, weights=True)
    source = Path(checkpoint_path)
    shipped = checkpoint.get("format") == WEIGHTS_FORMAT
    best = not shipped and source.name == "best.pt"
    if best and not checkpoint["config"].get("validation_samples"):
        raise UserError(f"{checkpoint_path} was chosen on the test set (its run has no "
                        "--validation-samples), so its test accuracy is not a fair one: ship "
                        f"{source.parent / 'last.pt'}")
    metrics = source.with_name(f"{source.stem}-metrics.csv" if shipped else "metrics.csv")
    if not metrics.is_file():
        raise UserError(f"{metrics} does not exist: it is shipped beside the weights (a run's "
                        "metrics.csv, or a shipped model's NAME-metrics.csv)")
    record_file = source.with_suffix(".json")
    if shipped and not commands and record_file.is_file():
        commands = json.loads(record_file.read_text()).get("commands")
    made_by = commands_of(checkpoint, commands or [])
    rows = [row for row in read_rows(metrics) if int(row["epoch"]) <= checkpoint["epoch"]]
    config = {k: v for k, v in checkpoint["config"].items() if k not in PLACE_SETTINGS}
    make_dir(out)
    new_weights, new_curve = (path.with_name(path.name + ".new") for path in (weights, curve))
    try:  # under other names until tested: a model already there stays whole until then
        save_weights(new_weights, {**checkpoint, "config": config})
        text = io.StringIO()
        writer = csv.DictWriter(text, list(rows[0]) if rows else ["epoch"])
        writer.writeheader()
        writer.writerows(rows)
        write_file(new_curve, text.getvalue().encode())
        evaluation = evaluate_run([str(new_weights)], {"device": device}, report=False)
        os.replace(new_weights, weights)
        os.replace(new_curve, curve)
    except BaseException:
        new_weights.unlink(missing_ok=True)
        new_curve.unlink(missing_ok=True)
        raise
    record = {
        "name": name, "file": weights.name, "bytes": weights.stat().st_size,
        "dataset": config["dataset"], "tested": evaluation.tested,
        "test_accuracy": round(evaluation.summary["accuracy"], 2),
        "test_loss": round(evaluation.summary["loss"], 5),
        "epoch": checkpoint["epoch"],
        "selected": selected(checkpoint, best),
        "parameters": sum(v.numel() for v in checkpoint["model"].values()),
        "commands": made_by, "settings": config,
        "trained_seconds": round(sum(float(row["seconds"]) for row in rows)),
        "machine": device_name(resolve_device("cpu")), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "metrics": curve.name,
        "note": "test_accuracy is of the float16 weights of this file, tested in float32",
    }
    write_file(out / f"{name}.json", (json.dumps(record, indent=2) + "\n").encode())
    return record


def main(argv: list[str] | None = None) -> int:
    from ..config import DEVICES
    from ..cli import ArgumentParser, exit_status
    parser = ArgumentParser(prog="python -m capsnet.weights", description=__doc__)
    parser.add_argument("checkpoint", help="a run's last.pt (or best.pt with a validation split)")
    parser.add_argument("name", help="the model's name, as capsnet.pretrained(NAME) takes it")
    parser.add_argument("--out", type=Path, default=FOLDER, metavar="DIR",
                        help="where to write (default: %(default)s)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to test the weights (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace a model of that name "
                        "already in DIR (once the new one has passed its test)")
    parser.add_argument("--command", action="append", default=[], metavar="COMMAND",
                        help="a train.py command that made the run, in order (repeat): needed "
                        "only for a run resumed from a checkpoint that does not keep them; "
                        "checked against the checkpoint's settings")
    args = parser.parse_args(argv)

    def work() -> None:
        record = ship(args.checkpoint, args.name, args.out, args.device, args.command,
                      args.force)
        print(f"{args.out / record['file']}: {record['bytes'] / 2 ** 20:.1f} MiB, test accuracy "
              f"{record['test_accuracy']:.2f}% on {record['tested']} (epoch {record['epoch']}); "
              f"capsnet.pretrained({args.name!r}) loads it")
    return exit_status(work)


if __name__ == "__main__":
    from ..cli import exit_with
    exit_with(main())
