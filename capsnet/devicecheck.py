"""Every GPU measurement in one call: `python -m capsnet.devicecheck --out DIR [--budget S]`
(`make device-check` on a GPU machine, after `make device-bundle` here).

Parts, in order, each stopped at its share of the budget (it then records what it has):
  tests   tests/test_cuda.py
  bench   capsnet.bench at batch 128 in fp32, tf32, bf16, bf16 + compile and bf16 + compile with
          CUDA graphs; then at batch 512 the fastest of those whose capsule lengths agree with
          fp32's within test_cuda.py's tolerance (0.02)
  epoch   two full MNIST epochs through train.py at that setting: the first with its compile
          time, the second without
  train   with the time left, the paper's recipe on MNIST, its last weights shipped into DIR
          (then the official recipe for as many epochs, if time remains), and the test curves
  rows    the BENCHMARKS.md and README rows of all this, ready to paste
Into DIR go at most 8 files: device-check.json (every result), device-check.log (every command
and its output), rows.md, curve.png, runs.tar.gz (metrics.csv and config.json of each run), and
the paper run's weights as capsnet.weights ships them: paper.pt (float16, about 16 MB),
paper.json (its test accuracy on the whole test set) and paper-metrics.csv. If they beat the
shipped model, `python -m capsnet.weights DIR/paper.pt mnist --force` ships them (docs/speed.md).
`--only PART` runs one part (`--results FILE` starts from an earlier device-check.json);
`--dry-run` runs every part on the CPU at tiny sizes, to check the command itself.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from .cli import ArgumentParser, exit_status, exit_with
from .errors import UserError
from .run.storage import write_file

PARTS = ("tests", "bench", "epoch", "train", "rows")
SHARES = {"tests": 0.15, "bench": 0.45, "epoch": 0.15, "train": 0.25}  # rows: from the others
BENCH = (("fp32", "fp32", None), ("tf32", "tf32", None), ("bf16", "bf16", None),
         ("bf16 + compile", "bf16", "default"),
         ("bf16 + compile + CUDA graphs", "bf16", "reduce-overhead"))  # label, precision, mode
TOLERANCE = 0.02  # capsule lengths against fp32: test_cuda.py's bf16 bound
REFERENCE_EPOCH = 120.0  # seconds: the reference PyTorch implementation's MNIST epoch
SMALL = ["--conv1-channels", "16", "--primary-types", "4", "--class-dim", "8"]  # dry run
STOP_GRACE = 20.0  # seconds a stopped command has to save and exit
SHIP_SECONDS = 60.0  # at least, to test and write the paper run's weights


class Check:
    """One device check: a budget shared by the parts, a log, and the results so far."""

    def __init__(self, out: Path, budget: float, dry_run: bool, results: dict[str, Any]) -> None:
        self.out, self.budget, self.dry_run, self.results = out, budget, dry_run, results
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="device-check-"))  # run directories
        self.log_path = self.out / "device-check.log"
        self.started = time.monotonic()
        self.results.setdefault("runs", {})
        self.results["dry_run"] = results.get("dry_run", False) or dry_run
        self.results.setdefault("date", time.strftime("%Y-%m-%d"))

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text.rstrip("\n") + "\n")
        print(text.rstrip("\n"), flush=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def command(self, argv: list[str], timeout: float) -> tuple[int | None, str, float]:
        """Run `python ARGV` for at most `timeout` seconds: exit status (None when stopped at
        the timeout), output, seconds."""
        self.log(f"$ python {' '.join(argv)}  (at most {timeout:.0f} s)")
        start = time.monotonic()
        if timeout < 1:
            self.log("not run: no time left in its share of the budget")
            return None, "", 0.0
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env)
        try:
            output, code = process.communicate(timeout=timeout)[0], process.returncode
        except subprocess.TimeoutExpired:  # SIGTERM: train.py saves its checkpoint and stops
            process.terminate()
            try:
                output = process.communicate(timeout=STOP_GRACE)[0]
            except subprocess.TimeoutExpired:
                process.kill()
                output = process.communicate()[0]
            code = None
            output += f"\nstopped at its share of the budget ({timeout:.0f} s)"
        seconds = time.monotonic() - start
        self.log(output[-4000:])
        self.log(f"exit {code}, {seconds:.1f} s")
        return code, output, seconds

    def save(self) -> None:
        write_file(self.out / "device-check.json",
                   (json.dumps(self.results, indent=2) + "\n").encode())

    # The parts.

    def tests(self, share: float) -> None:
        code, output, seconds = self.command(
            ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"], share)
        summary = next((line for line in reversed(output.splitlines())
                        if " passed" in line or " failed" in line or " skipped" in line), "")
        self.results["tests"] = {"exit": code, "summary": summary.strip("= "),
                                 "seconds": seconds}

    def bench(self, share: float) -> None:
        deadline = time.monotonic() + share
        rows = self.results["bench"] = []
        for label, precision, mode in BENCH:
            if mode and self.dry_run:
                rows.append({"label": label, "skipped": "no compile in a dry run on the CPU"})
                continue
            rows.append(self.bench_one(label, 8 if self.dry_run else 128, precision, mode,
                                       deadline - time.monotonic()))
        fp32 = rows[0].get("probe_lengths")
        for row in rows:
            if "probe_lengths" in row and fp32 is not None:
                row["agrees_with_fp32"] = max_difference(row.pop("probe_lengths"), fp32) \
                    <= TOLERANCE
        agreeing = [r for r in rows if r.get("agrees_with_fp32")]
        if not agreeing:
            self.results["setting"] = None
            return
        best = max(agreeing, key=lambda r: r["train_images_per_s"])
        self.results["setting"] = {k: best[k] for k in ("label", "precision", "compile_mode")}
        large = self.bench_one(best["label"], 16 if self.dry_run else 512, best["precision"],
                               best["compile_mode"], deadline - time.monotonic())
        large.pop("probe_lengths", None)
        rows.append(large)

    def bench_one(self, label: str, batch: int, precision: str, mode: str | None,
                  timeout: float) -> dict[str, Any]:
        path = self.work / "bench.json"
        path.unlink(missing_ok=True)
        argv = ["-m", "capsnet.bench", "--device", "cpu" if self.dry_run else "cuda",
                "--batch-size", str(batch), "--precision", precision, "--repeats", "1",
                "--json", str(path)]
        argv += ["--compile", "--compile-mode", mode] if mode else []
        argv += ["--steps", "1", "--warmup", "1", *SMALL] if self.dry_run else []
        code, _, seconds = self.command(argv, timeout)
        shown = [a for k, a in enumerate(argv) if "--json" not in argv[max(k - 1, 0):k + 1]]
        row: dict[str, Any] = {"label": label, "batch_size": batch, "precision": precision,
                               "compile_mode": mode, "command": "python " + " ".join(shown),
                               "exit": code, "seconds": seconds}
        if code == 0 and path.exists():
            row.update(json.loads(path.read_text()))
        return row

    def train_command(self, name: str, epochs: int, extra: list[str]) -> list[str]:
        setting = self.results.get("setting") or {"precision": "fp32", "compile_mode": None}
        argv = ["train.py", "--epochs", str(epochs), "--no-visdom", "--run-dir",
                str(self.work / name), "--precision", setting["precision"], *extra]
        if setting["compile_mode"]:
            argv += ["--compile", "--compile-mode", setting["compile_mode"]]
        if self.dry_run:
            argv += ["--device", "cpu", "--train-samples", "64", "--test-samples", "32",
                     "--batch-size", "16", *SMALL]
        else:
            argv += ["--device", "cuda"]
        return argv

    def run_training(self, name: str, epochs: int, extra: list[str], timeout: float) -> None:
        argv = self.train_command(name, epochs, extra)
        code, _, seconds = self.command(argv, timeout)
        rows = read_metrics(self.work / name / "metrics.csv")
        self.results["runs"][name] = {"command": "python " + " ".join(argv), "exit": code,
                                      "seconds": seconds, "epochs": rows}

    def epoch(self, share: float) -> None:
        self.run_training("epoch", 2, [], share)
        rows = self.results["runs"]["epoch"]["epochs"]
        self.results["epoch"] = {
            "images": "64 + 32 (a dry run)" if self.dry_run else "60,000 + 10,000",
            "with_compile_seconds": rows[0]["seconds"] if rows else None,
            "without_compile_seconds": rows[1]["seconds"] if len(rows) > 1 else None,
            "test_accuracy": rows[-1]["test_accuracy"] if rows else None}

    def train(self, share: float) -> None:
        deadline = time.monotonic() + share
        per_epoch = (self.results.get("epoch") or {}).get("without_compile_seconds") or 60.0
        startup = 30.0  # process start, data, memory check and compiling, a generous guess
        epochs = max(1, int((share / 2 - startup) // per_epoch))
        if self.dry_run:
            epochs, startup = min(epochs, 2), 5.0
        self.run_training("paper", epochs, ["--recipe", "paper"], deadline - time.monotonic())
        self.ship("paper", max(deadline - time.monotonic(), SHIP_SECONDS))
        if deadline - time.monotonic() > startup + epochs * per_epoch:
            self.run_training("official", epochs, ["--recipe", "official"],
                              deadline - time.monotonic())
        self.plot()

    def ship(self, name: str, timeout: float) -> None:
        """The run's last weights, shipped into DIR (NAME.pt in float16, NAME.json with their
        accuracy on the whole test set, NAME-metrics.csv)."""
        last = self.work / name / "last.pt"
        if not last.exists():
            self.log(f"{name}'s weights not shipped: its run wrote no checkpoint")
            return
        code, _, _ = self.command(["-m", "capsnet.weights", str(last), name, "--out",
                                   str(self.out), "--force", "--device",
                                   "cpu" if self.dry_run else "cuda"], timeout)
        if code == 0:
            record = json.loads((self.out / f"{name}.json").read_text())
            self.results["weights"] = {
                "file": record["file"], "test_accuracy": record["test_accuracy"],
                "tested": record["tested"], "epoch": record["epoch"]}

    def plot(self) -> None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.log("curve.png not drawn: matplotlib is missing (the points are in the JSON)")
            return
        figure, axis = plt.subplots(figsize=(6, 4))
        for name in ("paper", "official"):
            rows = self.results["runs"].get(name, {}).get("epochs") or []
            if rows:
                axis.plot([r["epoch"] for r in rows], [100 - r["test_accuracy"] for r in rows],
                          marker="o", label=f"{name} recipe")
        axis.set_xlabel("epoch")
        axis.set_ylabel("test error (%)")
        axis.set_title(f"MNIST on {self.device()}")
        axis.legend()
        figure.tight_layout()
        figure.savefig(self.out / "curve.png", dpi=120)
        plt.close(figure)

    def device(self) -> str:
        rows = [r for r in self.results.get("bench", []) if "device" in r]
        return rows[0]["device"] if rows else "the device"

    def rows(self) -> None:
        write_file(self.out / "rows.md", rows_text(self.results).encode())

    def pack(self) -> None:
        """metrics.csv and config.json of every run directory in one tarball; the run
        directories (their checkpoints) are then removed."""
        with tarfile.open(self.out / "runs.tar.gz", "w:gz") as tar:
            for run in sorted(p for p in self.work.iterdir() if p.is_dir()):
                for name in ("metrics.csv", "config.json"):
                    if (run / name).exists():
                        tar.add(run / name, arcname=f"{run.name}/{name}")
        shutil.rmtree(self.work, ignore_errors=True)


def max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def read_metrics(path: Path) -> list[dict[str, float]]:
    """A run's metrics.csv rows, as numbers."""
    from .run.rundir import read_rows
    return [{k: float(v) for k, v in row.items()} for row in read_rows(path)]


def rows_text(results: dict[str, Any]) -> str:
    """The rows for BENCHMARKS.md and README.md, from a device check's results."""
    bench = [r for r in results.get("bench", []) if "train_images_per_s" in r]
    device = bench[0]["device"] if bench else "?"
    torch_version = bench[0]["torch"] if bench else "?"
    date = results.get("date", "?")
    lines = [f"# Device check of {date}: {device}, torch {torch_version}"
             + (" (DRY RUN on the CPU: not a device measurement)" if results.get("dry_run") else ""),
             "", "## BENCHMARKS.md", "",
             "| setting | batch | train images/s | eval images/s | epoch s | compile s | "
             "peak MB | agrees with fp32 | vs 2-min reference | command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("bench", []):
        if "train_images_per_s" not in r:
            why = r.get("skipped") or f"not measured (exit {r.get('exit')})"
            lines.append(f"| {r['label']} | {r.get('batch_size', '')} | {why} | | | | | | | |")
            continue
        agrees = {True: "yes", False: "no"}.get(r.get("agrees_with_fp32"), "-")
        lines.append(
            f"| {r['label']} | {r['batch_size']} | {r['train_images_per_s']:.0f} | "
            f"{r['eval_images_per_s']:.0f} | {r['epoch_seconds']:.1f} | "
            f"{r['compile_seconds']:.1f} | {r['peak_memory_mb']:.0f} | {agrees} | "
            f"{REFERENCE_EPOCH / r['epoch_seconds']:.1f}x | `{r['command']}` |")
    epoch = results.get("epoch") or {}
    runs = results.get("runs", {})
    if epoch.get("with_compile_seconds") is not None:
        run = runs["epoch"]
        plain = epoch.get("without_compile_seconds")
        lines += ["", f"Full MNIST epoch ({epoch['images']} images) through train.py at "
                  f"{(results.get('setting') or {}).get('label', 'fp32')}: "
                  f"{epoch['with_compile_seconds']:.1f} s with its compile time, "
                  + (f"{plain:.1f} s without ({REFERENCE_EPOCH / plain:.1f}x the reference "
                     "implementation's 2-minute epoch)" if plain else "no second epoch")
                  + f"; `{run['command']}`"]
    tests = results.get("tests")
    if tests:
        lines += ["", f"tests/test_cuda.py: {tests['summary'] or 'no summary'} "
                  f"(exit {tests['exit']})"]
    lines += ["", "## README.md", "", "| run | epochs | test accuracy | seconds per epoch | "
              "command |", "|---|---|---|---|---|"]
    for name in ("paper", "official", "epoch"):
        rows = runs.get(name, {}).get("epochs") or []
        if rows:
            seconds = sum(r["seconds"] for r in rows) / len(rows)
            lines.append(f"| MNIST, {name} | {len(rows)} | {rows[-1]['test_accuracy']:.2f}% "
                         f"(best {max(r['test_accuracy'] for r in rows):.2f}%) | "
                         f"{seconds:.1f} | `{runs[name]['command']}` |")
    weights = results.get("weights")
    if weights:
        lines += ["", f"The paper run's weights after epoch {weights['epoch']}, {weights['file']} "
                  f"(float16): {weights['test_accuracy']:.2f}% on {weights['tested']}; if above "
                  "the shipped model's, ship them with `python -m capsnet.weights "
                  f"DIR/{weights['file']} mnist --force`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m capsnet.devicecheck",
                            description=__doc__)
    parser.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds for all parts together (default: %(default)s)")
    parser.add_argument("--only", choices=PARTS, help="run this part alone, with the budget")
    parser.add_argument("--results", metavar="FILE", help="an earlier device-check.json to "
                        "start from (for --only)")
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU at tiny "
                        "sizes: checks the command, measures nothing of a device")
    args = parser.parse_args(argv)

    def work() -> None:
        if args.budget <= 0:
            raise UserError(f"--budget {args.budget} is not allowed: use a number of seconds > 0")
        results = {}
        if args.results:
            try:
                results = json.loads(Path(args.results).read_text())
            except (OSError, ValueError) as error:
                raise UserError(f"--results {args.results} is not a readable device-check.json "
                                f"({type(error).__name__})") from None
        check = Check(Path(args.out), args.budget, args.dry_run, results)
        parts = [p for p in ([args.only] if args.only else PARTS) if p != "rows"]
        for k, part in enumerate(parts):  # the time left, shared by the parts still to run
            waiting = sum(SHARES[p] for p in parts[k:])
            share = max(check.left(), 0.0) * SHARES[part] / waiting
            check.log(f"== {part} ({share:.0f} s of {check.left():.0f} s left)")
            getattr(check, part)(share)
            check.save()
        check.pack()
        check.rows()
        check.save()
        check.log(f"device check done in {time.monotonic() - check.started:.0f} s: {check.out}")
    return exit_status(work)


if __name__ == "__main__":
    exit_with(main())
