"""The paper's comparisons, one command each:
`python -m capsnet.experiments NAME [--epochs E] [--seeds S] [--out DIR] [train.py flags]`.

  table1   the baseline; CapsNet with 1 routing iteration without and with reconstruction, and 3
           without and with (the paper's Table 1; with --dataset multimnist its MultiMNIST column)
  affnist  CapsNet and the affNIST baseline trained on mnist40 with a validation split until
           --stop-at-accuracy 99.23, then tested on affNIST (or, without its file, on the offline
           stand-in, labelled as such)
  routing  test error against routing iterations 1 to 5
  routing-algorithms
           every routing of capsnet.routing (--routing), with its parameters, training images/s
           and seconds per epoch measured in the same runs

Every run is an ordinary run directory under --out (with its own dashboard environment): runs
already complete are skipped and interrupted ones resumed, so the command can be stopped and started
again. A finished run keeps result.json beside its config.json and metrics.csv, and those three
files alone make its row: a run kept without its checkpoints still counts as complete. It prints a
line per run, goes on past a failed run, and writes results.md (each row's mean and spread over
the seeds beside the paper's number) and curves.png. A failed run's reason is in
its line, and its log (RUN.log beside it) keeps what it printed and its errors.

Any other flag goes to every run, as train.py takes it, except what the experiment sets itself:
--seed and --epochs (use --seeds and --epochs here), --run-dir, --visdom-env, --resume, --eval,
and the settings its rows compare or its protocol fixes (refused in one line). The runs share this
process's data (MNIST is read once); under torchrun each run uses all the processes.
"""
from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .run import distributed
from .cli import (MACHINE_SETTINGS, PLACE_SETTINGS, ArgumentParser, exit_with, flag,
                  training_exit_status)
from .errors import UserError
from .run.memory import tune_allocator
from .run.storage import write_file
from .routing import ROUTINGS

AFFNIST_TARGET = 99.23  # the paper's mnist40 accuracy at which training stops
# Tsai et al.'s model and loss around attention routing: layer-normalised primary capsules, the
# cross-entropy on the class logits, no decoder, and their README's two iterations
AUTHORS_ATTENTION = {"routing": "attention", "primary_norm": "layer-norm",
                     "score_loss": "cross-entropy", "reconstruction_weight": 0.0,
                     "routing_iterations": 2}


@dataclass(frozen=True)
class Row:
    label: str
    flags: dict[str, Any]  # train.py settings of this row's runs
    paper: dict[str, float] = field(default_factory=dict)  # dataset -> the paper's number


@dataclass(frozen=True)
class Experiment:
    name: str
    rows: tuple[Row, ...]
    metric: str  # "test error" or "affNIST accuracy"
    fixed: dict[str, Any] = field(default_factory=dict)  # settings every run of it takes
    speed: bool = False  # results.md also shows parameters, training images/s, s per epoch


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("table1", (
        Row("baseline CNN", {"model": "baseline"}, {"mnist": 0.39, "multimnist": 8.1}),
        Row("CapsNet, routing 1, no reconstruction",
            {"routing_iterations": 1, "reconstruction_weight": 0.0}, {"mnist": 0.34}),
        Row("CapsNet, routing 1, reconstruction", {"routing_iterations": 1},
            {"mnist": 0.29, "multimnist": 7.5}),
        Row("CapsNet, routing 3, no reconstruction",
            {"routing_iterations": 3, "reconstruction_weight": 0.0}, {"mnist": 0.35}),
        Row("CapsNet, routing 3, reconstruction", {"routing_iterations": 3},
            {"mnist": 0.25, "multimnist": 5.2}),
    ), "test error"),
    Experiment("affnist", (
        Row("CapsNet", {}, {"affnist": 79.0}),
        Row("baseline CNN (CapsNet-sized)", {"model": "baseline", "baseline_hidden": "54,192"},
            {"affnist": 66.0}),
    ), "affNIST accuracy", {"dataset": "mnist40", "stop_at_accuracy": AFFNIST_TARGET}),
    Experiment("routing", tuple(
        Row(f"routing {k}", {"routing_iterations": k}) for k in range(1, 6)), "test error"),
    Experiment("routing-algorithms", tuple(
        Row(name, {"routing": name}, {"mnist": 0.25} if name == "dynamic" else {})
        for name in ROUTINGS) + (Row("attention, its authors' form", AUTHORS_ATTENTION),),
        "test error", speed=True),
)}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


class Runner:
    """The runs of one experiment, in order, each skipped, resumed or started."""

    def __init__(self, experiment: Experiment, out: Path, epochs: int, seeds: int,
                 passed: dict[str, Any], dataset: str) -> None:
        self.experiment, self.out, self.epochs, self.seeds = experiment, out, epochs, seeds
        self.passed, self.dataset = passed, dataset  # passed: the settings given to every run
        self.failed: list[str] = []
        self.main = True  # under torchrun: rank 0 alone prints and writes

    def say(self, line: str) -> None:
        if self.main:
            print(line, flush=True)

    def run_dir(self, row: Row, seed: int) -> Path:
        return self.out / f"{slug(row.label)}-seed{seed}"

    def new_settings(self, row: Row, seed: int) -> dict[str, Any]:
        """The settings of a new run of `row` and `seed` (less --epochs)."""
        run = self.run_dir(row, seed)
        return {**self.passed, **self.experiment.fixed, **row.flags, "seed": seed,
                "run_dir": str(run), "visdom_env": f"{self.experiment.name}-{run.name}"}

    def check_kept(self) -> None:
        """Before any run: a kept run (finished, or with a checkpoint to resume) is reused only
        if it has this command's settings, but for --epochs and UNCHANGING."""
        from .cli import build
        from .config import Config
        for row in self.experiment.rows:
            for seed in range(self.seeds):
                run = self.run_dir(row, seed)
                if not ((run / RECORD).exists() or (run / "last.pt").exists()):
                    continue  # nothing kept: trained afresh
                try:
                    saved = asdict(build(Config, json.loads((run / "config.json").read_text())))
                except (OSError, ValueError, TypeError, UserError):
                    continue  # run_one reports what is wrong with it
                now = asdict(Config(**self.new_settings(row, seed)))
                differ = [k for k in now if k not in UNCHANGING and saved[k] != now[k]]
                if differ:
                    raise UserError(
                        f"{run} was trained with other settings ("
                        + "; ".join(f"{flag(k)} {saved[k]!r} there, {now[k]!r} now"
                                    for k in differ)
                        + f"): give these settings another --out, or remove {self.out} to "
                        "train them there")

    def run_all(self) -> None:
        total = len(self.experiment.rows) * self.seeds
        done = 0
        for row in self.experiment.rows:
            for seed in range(self.seeds):
                done += 1
                self.run_one(row, seed, f"[{done}/{total}]")

    def run_one(self, row: Row, seed: int, counter: str) -> None:
        from .run.storage import load_checkpoint
        from .run.rundir import RunDir
        from .run.runner import train_run
        run = self.run_dir(row, seed)
        name = f"{row.label}, seed {seed}"
        last = run / "last.pt"
        try:
            record = read_record(run)
        except UserError as error:
            self.fail(name, counter, str(error))
            return
        if record is not None and complete(record, self.epochs):
            self.say(f"{counter} {name}: complete, skipped ({run})")
            self.after(row, run, name, counter)
            return
        resume = None
        if last.exists():
            try:
                checkpoint = load_checkpoint(last)
            except UserError as error:
                self.fail(name, counter, str(error))
                return
            if complete(record_of(checkpoint), self.epochs):  # finished before result.json
                self.keep(run, record_of(checkpoint))
                self.say(f"{counter} {name}: complete, skipped ({run})")
                self.after(row, run, name, counter)
                return
            resume = str(last)
        elif record is not None:  # a kept record of fewer epochs, with nothing to continue from
            self.fail(name, counter, f"{run / RECORD} has {record['epochs']} epochs, fewer than "
                      f"--epochs {self.epochs}, and {last} is not there to continue from; "
                      "remove the directory to train it again")
            return
        elif run.exists():  # started but no checkpoint yet: nothing to keep
            for path in run.iterdir():
                path.unlink()
            run.rmdir()
        if resume:  # the rest of its settings are in its checkpoint
            given = {k: v for k, v in self.passed.items() if k in ON_RESUME}
        else:
            given = self.new_settings(row, seed)
        log = self.out / f"{run.name}.log"  # the run's lines, and its stderr's but the bars
        self.say(f"{counter} {name}: {'resuming' if resume else 'training'} in {run} "
                 f"(log: {log})")
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as sink:
            try:
                with contextlib.redirect_stdout(sink), \
                        contextlib.redirect_stderr(Tee(sink, sys.stderr)):
                    result = train_run({**given, "epochs": self.epochs}, resume)
            except UserError as error:
                print(f"error: {error}", file=sink)
                self.fail(name, counter, f"{error}; see {log}")
                return
        self.keep(run, {**{k: v for k, v in asdict(result).items() if k != "run_dir"},
                        **settings_of_record(json.loads((run / "config.json").read_text())),
                        "date": time.strftime("%Y-%m-%d")})
        rows = RunDir(run).read_metrics()
        self.say(f"{counter} {name}: {len(rows)} epochs in {time.monotonic() - started:.1f} s, "
                 f"test error {100 - float(rows[-1]['test_accuracy']):.2f}%")
        self.after(row, run, name, counter)

    def keep(self, run: Path, record: dict[str, Any]) -> None:
        if self.main:
            write_file(run / RECORD, (json.dumps(record, indent=2) + "\n").encode())

    def after(self, row: Row, run: Path, name: str, counter: str) -> None:
        """The affNIST experiment tests each trained run on affNIST (or the stand-in), once."""
        if self.experiment.name != "affnist" or (run / "affnist.txt").exists():
            return
        from .run.runner import evaluate_run
        given = {"dataset": self.dataset,
                 **{k: v for k, v in self.passed.items()
                    if k in ("data_dir", "device", "threads", "test_samples")}}
        try:
            summary, _, _, tested = evaluate_run([str(run / "best.pt")], given, report=False)
        except UserError as error:
            self.fail(name, counter, str(error))
            return
        if self.main:
            write_file(run / "affnist.txt", f"{summary['accuracy']}\n{tested}\n".encode())
        self.say(f"{counter} {name}: {summary['accuracy']:.2f}% on {self.dataset} ({tested})")

    def fail(self, name: str, counter: str, why: str) -> None:
        self.failed.append(name)
        self.say(f"{counter} {name}: FAILED ({why}); going on with the others")


class Tee(io.TextIOBase):
    """A run's stderr (warnings, the interrupt's line): to the terminal as it comes, and to its
    log without the progress bars' redrawn lines."""

    def __init__(self, log: TextIO, terminal: TextIO) -> None:
        self.log, self.terminal = log, terminal

    def write(self, text: str) -> int:
        self.terminal.write(text)
        self.log.writelines(line for line in text.splitlines(keepends=True) if "\r" not in line)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()


# A finished run's record in its directory: what results.md says of it, so that the run's
# config.json, metrics.csv and this file are enough to keep it (its checkpoints are not needed).
RECORD = "result.json"


def settings_of_record(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k, 0) for k in ("stop_at_accuracy", "validation_samples")}


def record_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The record of a run from its last checkpoint, for a run finished before records were kept
    (where it ran is not in the checkpoint)."""
    return {"epochs": checkpoint["epoch"], "batch": checkpoint["batch"],
            "best_epoch": checkpoint["best_epoch"], "best_accuracy": checkpoint["best_accuracy"],
            "test_accuracy": checkpoint["best_test_accuracy"],
            "validated": bool(checkpoint["config"].get("validation_samples")),
            "parameters": sum(t.numel() for t in checkpoint["model"].values()),
            "machine": "not recorded", "precision": checkpoint["config"].get("precision", "fp32"),
            **settings_of_record(checkpoint["config"]), "date": "not recorded"}


def read_record(run: Path) -> dict[str, Any] | None:
    path = run / RECORD
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"could not read {path} ({error}); remove it to train the run "
                        "again") from None


def complete(record: dict[str, Any], epochs: int) -> bool:
    """A run that trained its epochs, or stopped at its --stop-at-accuracy."""
    if record.get("batch"):
        return False
    target = record["stop_at_accuracy"]
    return record["epochs"] >= epochs or bool(target and record["best_accuracy"] >= target)


def passed_settings(passed: list[str]) -> dict[str, Any]:
    """The Config settings among the flags passed on (a --preset's too), parsed and checked as
    train.py does: a bad flag, value or abbreviation is refused in one line before any run."""
    from .config import Config
    from .run.runner import parse, settings_of
    args = parse(passed)
    if args.resume or args.eval:
        raise UserError(f"--{'resume' if args.resume else 'eval'} is not allowed: the experiment "
                        "resumes its interrupted runs itself (run it again) and tests every run")
    settings = settings_of(args)
    Config(**settings)
    return settings


# Settings the experiment sets for every run itself, besides what its rows vary.
OWNED = ("epochs", "seed", "run_dir", "visdom_env")


def check_owned(experiment: Experiment, settings: dict[str, Any]) -> None:
    """Refuse a passed setting that the experiment sets for its runs (in whatever form given)."""
    from .config import flag
    varied = {k for row in experiment.rows for k in row.flags} | set(experiment.fixed)
    for name in settings:
        if name in ("epochs", "seed"):
            raise UserError(f"{flag(name)} is set by the experiment for each run; pass --epochs "
                            "and --seeds to the experiment instead")
        if name in OWNED:
            raise UserError(f"{flag(name)} is set by the experiment for each run (it names each "
                            "run's directory and dashboard environment); pass --out instead")
        if name in varied:
            raise UserError(f"{flag(name)} is set by the {experiment.name} experiment's runs "
                            "(it is what they compare, or fixed by its protocol); it cannot be "
                            "passed to them")


# What a resumed run takes from this invocation: where the data and the machine are, and the
# dashboard's place (the rest of its settings are in its checkpoint).
ON_RESUME = MACHINE_SETTINGS + ("data_dir", "download", "visdom", "visdom_host", "visdom_port")
# settings that do not change what a run learns: a kept run is reused whatever they were
UNCHANGING = MACHINE_SETTINGS + PLACE_SETTINGS + (
    "epochs", "download", "log_every", "visdom", "visdom_host", "visdom_port", "visdom_env",
    "visdom_every", "visdom_figures_every", "visdom_autostart")


def results(runner: Runner) -> tuple[str, list[tuple[str, list[list[tuple[int, float]]]]]]:
    """results.md's text, and each row's test-error curves (one per seed), from each run's
    record and metrics.csv."""
    from .run.rundir import RunDir
    experiment = runner.experiment
    paper_key = "affnist" if experiment.name == "affnist" else runner.dataset
    machines: set[str] = set()  # where the runs trained, and when
    dates: set[str] = set()
    lines, curves = [], []
    selection = ""
    for row in experiment.rows:
        values, row_curves, speeds = [], [], []  # speeds: (parameters, images/s, s per epoch)
        lowest = []  # each seed's best test epoch, a point of its curve: (test error, epoch)
        for seed in range(runner.seeds):
            run = runner.run_dir(row, seed)
            try:
                record = read_record(run)
            except UserError:  # its line in the run's output says so
                record = None
            if record is None:
                continue
            machines.add(f"{record['machine']} in {record['precision']}")
            dates.add(record["date"])
            metrics = RunDir(run).read_metrics()
            speeds.append((record["parameters"],
                           statistics.mean(float(m["train_images_per_s"]) for m in metrics),
                           statistics.mean(float(m["seconds"]) for m in metrics)))
            row_curves.append([(int(m["epoch"]), 100 - float(m["test_accuracy"]))
                               for m in metrics])
            lowest.append(min((error, epoch) for epoch, error in row_curves[-1]))
            if experiment.name == "affnist":
                if (run / "affnist.txt").exists():
                    values.append(float((run / "affnist.txt").read_text().split()[0]))
                selection = "the best validation epoch (stopped at 99.23% or at --epochs)"
            elif record["validated"]:
                values.append(100 - record["test_accuracy"])
                selection = (f"the best validation epoch ({record['validation_samples']:,} "
                             "training images held out)")
            else:
                values.append(100 - float(metrics[-1]["test_accuracy"]))
                selection = "none: the last epoch (no --validation-samples)"
        curves.append((row.label, row_curves))
        paper = row.paper.get(paper_key)
        ours = (f"{statistics.mean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}"
                                                    if len(values) > 1 else "")
                if values else "not run")
        speed = ""
        if experiment.speed:
            speed = (f" {speeds[0][0]:,} | {statistics.mean(s[1] for s in speeds):.1f} | "
                     f"{statistics.mean(s[2] for s in speeds):.2f} |" if speeds else " - | - | - |")
        best = "-"
        if lowest:
            errors = [error for error, _ in lowest]
            best = (f"{statistics.mean(errors):.2f}"
                    + (f" ± {statistics.stdev(errors):.2f}" if len(errors) > 1 else "")
                    + f" (epoch{'s' if len(lowest) > 1 else ''} "
                    + ", ".join(str(epoch) for _, epoch in lowest) + ")")
        lines.append(f"| {row.label} | {ours} | {len(values)} | "
                     f"{paper if paper is not None else '-'} |{speed} {best} |")
    tested = ""
    if experiment.name == "affnist":
        tested = (" Tested on **the offline stand-in, not affNIST**: not comparable with the "
                  "paper's numbers." if runner.dataset != "affnist" else " Tested on affNIST.")
    unit = "%" if experiment.metric == "affNIST accuracy" else "% (100 - test accuracy)"
    text = "\n".join([
        f"# {experiment.name}" + (f" on {runner.dataset}" if experiment.name != "affnist" else ""),
        "",
        f"{experiment.metric} in {unit}: mean ± standard deviation over the seeds, beside the "
        f"paper's.{tested} Best test epoch: each run's lowest test error and its epoch, a point "
        "of its curve, never the result.",
        "",
        f"Selection: {selection or '-'}. Epochs: {runner.epochs}. Seeds: {runner.seeds}. "
        f"Device: {'; '.join(sorted(machines)) or '-'}. Trained: {', '.join(sorted(dates)) or '-'}.",
        "",
        "| run | ours | seeds | the paper |"
        + (" parameters | train images/s | s per epoch |" if experiment.speed else "")
        + " best test epoch |",
        "|---|---|---|---|" + ("---|---|---|" if experiment.speed else "") + "---|",
        *lines,
        "",
        "![test error per epoch](curves.png)",
        "",
    ])
    if runner.failed:
        text += "\nFailed runs: " + "; ".join(runner.failed) + "\n"
    return text, curves


def plot(path: Path, curves: list[tuple[str, list[list[tuple[int, float]]]]], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for k, (label, runs) in enumerate(curves):
        for s, points in enumerate(runs):
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o", color=f"C{k}", alpha=0.8,
                          label=label if s == 0 else None)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    axis.set_xlabel("epoch")
    axis.set_ylabel("test error (%)")
    axis.set_title(title)
    if any(runs for _, runs in curves):
        axis.legend(fontsize=8)
    figure.tight_layout()
    from io import BytesIO
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_file(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    tune_allocator()  # the runs' allocator, before their first tensor
    parser = ArgumentParser(prog="python -m capsnet.experiments", allow_abbrev=False,
                            description=__doc__)
    parser.add_argument("name", choices=sorted(EXPERIMENTS))
    parser.add_argument("--epochs", type=int, default=50, help="epochs of each run (default: "
                        "%(default)s; the affnist runs stop earlier at 99.23%%)")
    parser.add_argument("--seeds", type=int, default=1, help="runs of each row, seeds 0..S-1 "
                        "(default: %(default)s)")
    parser.add_argument("--out", metavar="DIR", help="where the runs and results.md go "
                        "(default: experiments/NAME)")
    args, passed = parser.parse_known_args(argv)

    def work() -> None:
        from .config import Config
        from .data.splits import shared_splits
        if args.epochs < 1 or args.seeds < 1:
            raise UserError("--epochs and --seeds must be >= 1")
        settings = passed_settings(passed)  # bad flags: one line, before any run
        experiment = EXPERIMENTS[args.name]
        out = Path(args.out or f"experiments/{args.name}")
        dataset = settings.get("dataset", "mnist")
        if experiment.name == "affnist":
            if "dataset" in settings:
                raise UserError("the affnist experiment trains on mnist40 and tests on affnist: "
                                "--dataset is not allowed")
            root = Path(settings.get("data_dir", Config.__dataclass_fields__["data_dir"].default))
            dataset = "affnist" if (root / "affNIST" / "test.mat").exists() \
                else "mnist-affine-standin"
            settings.setdefault("validation_samples", 10000)  # as the authors' code holds out
        check_owned(experiment, settings)
        for row in experiment.rows:  # a setting that a row's run would refuse: before any run
            Config(**{**settings, **experiment.fixed, **row.flags})
        runner = Runner(experiment, out, args.epochs, args.seeds, settings, dataset)
        runner.main = distributed.join(settings.get("device", "auto")).main
        runner.say(f"{args.name}: {len(experiment.rows) * args.seeds} runs of {args.epochs} "
                   f"epochs into {out}"
                   + (f", tested on {dataset}" if experiment.name == "affnist" else ""))
        runner.check_kept()
        with shared_splits(), distributed.staying():  # one group for all the runs
            runner.run_all()
        if runner.main:
            text, curves = results(runner)
            write_file(out / "results.md", text.encode())
            plot(out / "curves.png", curves, f"{args.name}: test error per epoch")
        runner.say(f"results in {out / 'results.md'}"
                   + (f"; {len(runner.failed)} runs failed" if runner.failed else ""))
        if runner.failed:
            raise UserError(f"{len(runner.failed)} of the runs failed: "
                            + "; ".join(runner.failed))
    return training_exit_status(work)


if __name__ == "__main__":
    exit_with(main())
