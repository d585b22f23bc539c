"""Train CapsNet, or test a checkpoint: `python -m capsnet.train [--epochs N ...]`, with the
package's defaults; the repository's train.py is this command with config.py's values as its
defaults. Ctrl-C or SIGTERM saves last.pt and stops between batches (resume with --resume)."""
from __future__ import annotations

from pathlib import Path

from .cli import exit_status, exit_with, training_exit_status
from .config import values_in
from .run.distributed import leave
from .run.memory import tune_allocator
from .run.runner import evaluate_run, parse, settings_of, train_run


def main(argv: list[str] | None = None, config: str | Path | None = None,
         prog: str = "python -m capsnet.train") -> int:
    """The command; `config`: a config file whose values are the defaults (train.py's
    config.py)."""
    tune_allocator()  # before tensors are made: page faults cost a third of CPU training time
    defaults: dict = {}
    if config is not None:
        status = exit_status(lambda: defaults.update(values_in(config)))
        if status:
            return status
    args = parse(argv, defaults if config is not None else None, prog, __doc__)
    given = settings_of(args)

    def work() -> None:
        if args.eval:
            evaluate_run(args.eval, given, args.allow_other_dataset, defaults=defaults)
        else:
            train_run(given, args.resume, args.allow_other_dataset, defaults)
        leave()
    return training_exit_status(work)


if __name__ == "__main__":
    exit_with(main())
