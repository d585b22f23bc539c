"""A run as a library call: `train_run(settings)` trains (or resumes) one run and returns its
result; `evaluate_run(paths, settings)` tests checkpoints. `parse` reads the training command's
flags (capsnet.train) and `settings_of` turns them into those settings; the experiments command
parses the flags it passes on the same way and calls the same functions for each of its runs.

`defaults` everywhere are a config file's values (capsnet.config.values_in): for a new run they
stand under a --preset and the flags; a resumed or evaluated run keeps its checkpoint's
settings, and takes them only where it has none."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .storage import load_checkpoint
from ..config import PRESETS, Config, environment_defaults
from ..cli import (ArgumentParser, add_settings, command_line, device_name, flag, overrides,
                   precision_label, resumed_settings)


def parse(argv: list[str] | None, defaults: dict[str, Any] | None = None,
          prog: str = "train.py", description: str = "") -> argparse.Namespace:
    """The training command's flags: --resume, --eval, --preset, --allow-other-dataset and one
    per Config field, each saying its default (`defaults`' value, else the package's); no
    abbreviations, so a flag means what it says."""
    parser = ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--resume", metavar="PATH", help="continue the run of this checkpoint, "
                         "in its directory; flags given here override its saved settings (see "
                         "README: Resume, evaluate, interrupt)")
    actions.add_argument("--eval", metavar="PATH", nargs="+", help="evaluate this checkpoint on "
                         "the test set; several: their ensemble (mean capsule lengths)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named settings (the "
                        "paper's for a dataset, or the shipped MNIST model's schedule): "
                        + "; ".join(f"{name}: " + ", ".join(f"{flag(k)} {v}"
                                                            for k, v in values.items())
                                    for name, values in PRESETS.items()) + " (flags given win)")
    parser.add_argument("--allow-other-dataset", action="store_true",
                        help="let --resume or --eval use a checkpoint on a dataset other than "
                        "the one it was trained on")
    add_settings(parser, Config, "settings" + (" (defaults: config.py's values)" if defaults
                                               is not None else " (defaults: the package's)"),
                 defaults)
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The Config settings given on the command line: a --preset's, then the flags'."""
    return {**PRESETS.get(args.preset, {}), **overrides(args, Config)}


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports: where it is and the epoch it selected."""
    run_dir: Path
    epochs: int  # epochs trained, in all
    best_epoch: int
    best_accuracy: float  # the selection accuracy (validation, else test) of best_epoch
    test_accuracy: float  # best_epoch's test accuracy
    validated: bool  # selected on a held-out validation split (else on the test set)
    parameters: int
    machine: str  # the GPU's name or the CPU's model, as device_name says it
    precision: str  # as the run's first line says it


def train_run(given: dict[str, Any], resume: str | None = None,
              allow_other_dataset: bool = False,
              defaults: dict[str, Any] | None = None) -> RunResult:
    """Train a new run of the settings `given` (Config field -> value) over `defaults`, or
    resume the run of the checkpoint `resume` with `given` overriding its saved settings. Prints
    the run's first and last lines; Ctrl-C or SIGTERM saves last.pt and exits with status 130.
    A resume continues in the checkpoint's directory, or in a new one that `given` names
    (run_dir), which starts with copies of the run's metrics.csv and best.pt."""
    from .distributed import join
    from .rundir import RunDir
    from ..training import Trainer
    checkpoint = load_checkpoint(resume) if resume else None
    source = Path(resume).parent if resume else None
    elsewhere = bool(source and given.get("run_dir")
                     and Path(given["run_dir"]).resolve() != source.resolve())
    if checkpoint is not None:
        cfg = resumed_settings(Config, checkpoint["config"],
                               {**given, "run_dir": given["run_dir"] if elsewhere
                                else str(source)}, {**environment_defaults(), **(defaults or {})})
    else:
        given = {**(defaults or {}), **given}
        cfg = Config(**{**environment_defaults(), **given})
    world = join(cfg.device)
    if checkpoint is None:  # rank 0 names a new run's directory for every process
        cfg.run_dir = world.broadcast(str(RunDir.create(cfg.run_dir).path) if world.main else "")
    run = RunDir(Path(cfg.run_dir))
    if world.main:
        run.lock(new=checkpoint is None or elsewhere)  # a new directory must be empty
    try:
        if world.main and elsewhere:
            run.continue_from(source)
        trainer = Trainer(cfg, run, checkpoint, Path(resume) if resume else None,
                          allow_other_dataset, command_line(given, resume))
        if world.main:
            start(cfg, run, trainer, resume)
        try:
            trainer.fit()
        except KeyboardInterrupt:
            if world.main:
                print(f"\ninterrupted: saved {run.last} ({trainer.where()}); continue with "
                      f"python train.py --resume {run.last}", file=sys.stderr)
            raise SystemExit(130) from None
    finally:
        run.unlock()
    validated = trainer.validator is not None
    best = trainer.best
    result = RunResult(run.path, trainer.position.epoch, best.epoch, best.accuracy,
                       best.test_accuracy, validated, trainer.parameter_count,
                       device_name(trainer.device), precision_label(cfg.precision, trainer.device))
    if world.main:
        metric = "pair accuracy" if trainer.objects > 1 else "accuracy"
        if validated:
            chosen = (f"best validation {metric} {result.best_accuracy:.2f}% at epoch "
                      f"{result.best_epoch} ({trainer.validator.batches.describe()} held out of "
                      f"the training set), whose test {metric} is {result.test_accuracy:.2f}%")
        else:
            chosen = (f"best test {metric} {result.best_accuracy:.2f}% at epoch "
                      f"{result.best_epoch} (selected on the test set: no --validation-samples)")
        print(f"done: {chosen}; metrics in {run.metrics}, checkpoints {run.last} and "
              f"{run.best}")
    return result


def start(cfg: Config, run: Any, trainer: Any, resume: str | None) -> None:
    """Rank 0's part of starting a run: config.json, metrics.csv, the dashboard, a first line."""
    kernels = trainer.parts.kernels
    run.write_config(cfg, kernels.record())
    if resume:
        run.keep_epochs(trainer.position.epoch)
    if cfg.visdom:
        from ..dashboard.dashboard import attach
        dashboard = attach(cfg, trainer.run_start())
        if dashboard is not None:
            trainer.listeners.append(dashboard)
    world = trainer.world
    processes = (f"{world.size} processes, global batch {world.size * cfg.batch_size}; "
                 if world.distributed else "")
    resumed = f"; resumed from {resume} ({trainer.where()})" if resume else ""
    memory = f"{trainer.parts.memory}; " if trainer.parts.memory else ""
    held_out = (f", validating on {trainer.validator.batches.describe()} held out"
                if trainer.validator else "")
    compiled = f"compiled ({cfg.compile_mode} mode)" if cfg.compile else "eager"
    capped = [f"{flag(name)} {asked} is more than the {batches.count:,} there: all are used"
              for name, asked, batches in (
                  ("train_samples", cfg.train_samples, trainer.train_batches),
                  ("test_samples", cfg.test_samples, trainer.evaluator.batches))
              if asked > batches.count]
    print(f"capsnet: {cfg.dataset}, {cfg.model}, {trainer.train_images:,} training examples"
          f"{held_out}, testing on {trainer.evaluator.batches.describe()}, "
          f"{trainer.parameter_count:,} parameters, on {trainer.device} in "
          f"{precision_label(cfg.precision, trainer.device)}, "
          f"{compiled}; {kernels.line()}; {processes}{memory}"
          f"epochs {trainer.position.epoch + 1}-{cfg.epochs}{resumed}"
          + "".join(f"; {note}" for note in [*capped, *trainer.notes])
          + f"; run directory {run.path}", flush=True)
    for line in kernels.warnings():
        print(line, flush=True)


class Evaluation(NamedTuple):
    summary: dict[str, float]  # loss, score_loss, reconstruction, accuracy (at_least_one)
    confusion: Any  # (classes, classes) int array, rows: true class
    classes: tuple[str, ...]
    tested: str  # what was tested, in words: "mnist (10,000 images)"


def tested_weights(checkpoint: dict[str, Any]) -> str:
    """", the average of the weights after epochs a-b" for a checkpoint whose model is one."""
    from ..averaging import Averaged
    averaged = Averaged.of(checkpoint)
    return f", {averaged.describe()}" if averaged else ""


def evaluate_run(paths: list[str], given: dict[str, Any], allow_other_dataset: bool = False,
                 report: bool = True, defaults: dict[str, Any] | None = None) -> Evaluation:
    """Test one checkpoint, or the ensemble of several (mean capsule lengths), on the whole test
    set unless `given` says test_samples; with `report`, print the result and the confusion
    matrix."""
    from ..meters import accuracy_text
    from ..training import evaluate_checkpoints
    checkpoints = [load_checkpoint(path, weights=True) for path in paths]
    # The whole test set, unless --test-samples is given here: never the training run's subset.
    saved = {**checkpoints[0]["config"], "test_samples": 0}
    cfg = resumed_settings(Config, saved, given, {**environment_defaults(), **(defaults or {})})
    summary, confusion, classes, tested = evaluate_checkpoints(cfg, checkpoints,
                                                               allow_other_dataset)
    if not report:
        return Evaluation(summary, confusion, classes, tested)
    what = (f"{paths[0]}: epoch {checkpoints[0]['epoch']}{tested_weights(checkpoints[0])}"
            if len(paths) == 1 else
            f"ensemble of {len(paths)} ({', '.join(paths)}), mean capsule lengths")
    print(f"{what} on {cfg.dataset} ({tested}), test loss {summary['loss']:.4f}, "
          f"{accuracy_text(summary)} "
          f"(score loss {summary['score_loss']:.4f}, reconstruction "
          f"{summary['reconstruction']:.4f})")
    width = max(6, *(len(c) for c in classes), len(str(confusion.max())))
    print("confusion matrix (rows: true class, columns: predicted), and each class's accuracy")
    print(" " * width + "".join(f"{c:>{width + 1}}" for c in classes) + "  accuracy")
    for k, (name, row) in enumerate(zip(classes, confusion)):
        accuracy = f"{100 * row[k] / row.sum():.2f}%" if row.sum() else "-"
        print(f"{name:>{width}}" + "".join(f"{n:>{width + 1}}" for n in row) + f"  {accuracy:>8}")
    return Evaluation(summary, confusion, classes, tested)
