"""Train CapsNet: `python train.py [--epochs N ...]`; see `--help` and config.py."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from capsnet.checkpoint import load_checkpoint
from capsnet.cli import ArgumentParser, add_settings, build, overrides
from capsnet.errors import UserError
from config import Config


def parse(argv: list[str] | None) -> tuple[dict, str | None, str | None]:
    parser = ArgumentParser(prog="train.py", description=__doc__)
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--resume", metavar="PATH", help="continue the run of this checkpoint, "
                         "in its directory; flags given here override its saved settings")
    actions.add_argument("--eval", metavar="PATH", help="evaluate this checkpoint on the test set")
    add_settings(parser, Config)
    args = parser.parse_args(argv)
    return overrides(args, Config), args.resume, args.eval


def evaluate(path: str, given: dict) -> None:
    from capsnet.training import evaluate_checkpoint
    checkpoint = load_checkpoint(path)
    cfg = build(Config, {**checkpoint["config"], **given})
    summary, confusion, classes = evaluate_checkpoint(cfg, checkpoint)
    print(f"{path}: epoch {checkpoint['epoch']}, test loss {summary['loss']:.4f}, "
          f"accuracy {summary['accuracy']:.2f}% "
          f"(margin {summary['margin']:.4f}, reconstruction {summary['reconstruction']:.4f})")
    width = max(6, *(len(c) for c in classes), len(str(confusion.max())))
    print("confusion matrix (rows: true class, columns: predicted)")
    print(" " * width + "".join(f"{c:>{width + 1}}" for c in classes))
    for name, row in zip(classes, confusion):
        print(f"{name:>{width}}" + "".join(f"{n:>{width + 1}}" for n in row))


def train(given: dict, resume: str | None) -> None:
    from capsnet.rundir import RunDir
    from capsnet.training import Trainer
    checkpoint = load_checkpoint(resume) if resume else None
    if checkpoint is not None:
        cfg = build(Config, {**checkpoint["config"], **given, "run_dir": str(Path(resume).parent)})
        run = RunDir(Path(cfg.run_dir))
    else:
        cfg = Config(**given)
        run = RunDir.create(cfg.run_dir)
        cfg.run_dir = str(run.path)
    trainer = Trainer(cfg, run, checkpoint)
    run.write_config(cfg)
    if cfg.visdom:
        from capsnet.dashboard import attach
        attach(cfg, trainer)
    if checkpoint is not None:
        run.keep_epochs(trainer.epoch)
    print(f"capsnet: {len(trainer.train_batches.split)} train / "
          f"{len(trainer.evaluator.batches.split)} test images of {cfg.dataset}, "
          f"{trainer.parameter_count:,} parameters, on {trainer.device}; "
          f"epochs {trainer.epoch + 1}-{cfg.epochs}; run directory {run.path}", flush=True)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        print(f"\ninterrupted: saved {run.last}; continue with "
              f"python train.py --resume {run.last}", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"done: best test accuracy {trainer.best_accuracy:.2f}%; "
          f"metrics in {run.metrics}, checkpoints {run.last} and {run.best}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill saves like Ctrl-C
    given, resume, checkpoint = parse(argv)
    try:
        if checkpoint:
            evaluate(checkpoint, given)
        else:
            train(given, resume)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
