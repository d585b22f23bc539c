"""The training command: its flags (capsnet.run.runner.parse; config.py holds the defaults) in, one run
or evaluation (capsnet.run.runner) out; Ctrl-C or SIGTERM saves and stops between batches."""
from __future__ import annotations

import sys

from capsnet.cli import training_exit_status
from capsnet.run.distributed import leave
from capsnet.run.memory import tune_allocator
from capsnet.run.runner import evaluate_run, parse, settings_of, train_run


def main(argv: list[str] | None = None) -> int:
    tune_allocator()  # before tensors are made: page faults cost a third of CPU training time
    args = parse(argv)
    given = settings_of(args)

    def work() -> None:
        if args.eval:
            evaluate_run(args.eval, given, args.allow_other_dataset)
        else:
            train_run(given, args.resume, args.allow_other_dataset)
        leave()
    return training_exit_status(work)


if __name__ == "__main__":
    sys.exit(main())
