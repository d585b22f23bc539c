"""The command line: flags generated from a settings dataclass, one-line errors, the settings of
a resumed run, and the device a --device choice names."""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import shlex
import signal
import sys
import typing
from typing import Any, Callable, NoReturn

import torch

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit status 2, and shows a command's
    description (its module's docstring) as written."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low`, refused in one line otherwise."""
    def parse(text: str) -> int:
        try:
            if int(text) >= low:
                return int(text)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: use an integer >= {low}")
    return parse


def exit_status(work: Callable[[], None]) -> int:
    """Run a command's work: 0 when it ends well; for bad input or a failing disk (UserError)
    one line and 2; for Ctrl-C or SIGTERM one line and 130."""
    try:
        work()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def exit_with(status: int) -> NoReturn:
    """End a command with `status`. Its objects are frozen out of the cyclic garbage collector
    first: at interpreter exit its passes over torch's hundreds of thousands of objects take
    0.5-1.2 s of a command's end (BENCHMARKS.md), for memory the process hands back anyway."""
    gc.freeze()
    sys.exit(status)


def training_exit_status(work: Callable[[], None]) -> int:
    """exit_status for a command that trains: SIGTERM stops it as Ctrl-C does, so the run saves
    its checkpoint between batches before it ends."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return exit_status(work)
    finally:
        signal.signal(signal.SIGTERM, previous)


def flag(name: str) -> str:
    """A setting's command-line flag: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def add_settings(parser: argparse.ArgumentParser, settings: type, title: str,
                 defaults: dict[str, Any] | None = None) -> None:
    """Add one flag per dataclass field, its help saying its default (`defaults`' value, else
    the field's); a flag not given is absent from the parsed namespace."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        kind = hints[f.name]
        default = (defaults or {}).get(f.name, f.default)
        name = flag(f.name)
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        if kind is bool:
            group.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(name, dest=f.name, type=kind, default=argparse.SUPPRESS,
                               choices=f.metadata.get("choices"), help=help_text,
                               metavar=None if f.metadata.get("choices") else f.name.upper())


def overrides(namespace: argparse.Namespace, settings: type) -> dict[str, Any]:
    """The settings that were given on the command line."""
    names = {f.name for f in dataclasses.fields(settings)}
    return {k: v for k, v in vars(namespace).items() if k in names}


def build(settings: type, values: dict[str, Any]) -> Any:
    """Create the settings object from saved values, ignoring names it no longer has."""
    names = {f.name for f in dataclasses.fields(settings)}
    return settings(**{k: v for k, v in values.items() if k in names})


# Settings of the machine, not of the run: a resumed or evaluated checkpoint takes them from this
# invocation (its flags, environment or config.py's values), never from the checkpoint.
MACHINE_SETTINGS = ("device", "threads", "compile", "compile_mode", "memory_check",
                    "fast_kernels", "micro_batch")
# Settings of where a run's files are, not of what it learned: left out of its recorded commands.
PLACE_SETTINGS = ("data_dir", "run_dir")
DATA_DIR_ENV = "CAPSNET_DATA_DIR"


def command_line(given: dict[str, Any], resume: str | None = None) -> str | None:
    """The train.py command of the settings `given` (field -> value), less PLACE_SETTINGS; None
    for a resume that changes none."""
    words = ["python", "train.py", *(["--resume", resume] if resume else [])]
    for name, value in given.items():
        if name in PLACE_SETTINGS:
            continue
        if isinstance(value, bool):
            words.append(flag(name) if value else "--no-" + flag(name)[2:])
        else:
            words += [flag(name), str(value)]
    return None if resume and len(words) == 4 else shlex.join(words)


def resumed_settings(settings: type, saved: dict[str, Any], given: dict[str, Any],
                     defaults: dict[str, Any] | None = None) -> Any:
    """The settings of a checkpoint's run, overridden by this invocation's flags; `defaults`
    (config.py's values) stand where the checkpoint has none, and for MACHINE_SETTINGS. The
    dataset root is the flag's, else $CAPSNET_DATA_DIR's, else the checkpoint's."""
    kept = {k: v for k, v in saved.items() if k not in MACHINE_SETTINGS}
    if os.environ.get(DATA_DIR_ENV):
        kept["data_dir"] = os.environ[DATA_DIR_ENV]
    return build(settings, {**(defaults or {}), **kept, **given})


def resolve_device(name: str) -> torch.device:
    """The device a --device choice names (auto: a GPU when there is one)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


BF16_UNITS = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}


def bf16_units() -> list[str]:
    """The CPU's bfloat16 matrix instructions, by their /proc/cpuinfo flags: amx_bf16 (every
    CPU with AMX tiles has it), avx512_bf16; none on CPUs that emulate bf16 in float32."""
    return [flag for flag, check in BF16_UNITS.items()
            if getattr(torch.cpu, check, lambda: False)()]


def resolved_precision(precision: str, device: torch.device) -> str:
    """The precision a --precision choice names on `device`; auto: bf16 where the device has
    bf16 matrix units (bf16_units on a CPU, a CUDA GPU that supports bf16), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if bf16_units() else "fp32"


def precision_label(precision: str, device: torch.device) -> str:
    """The precision as a run's first line and the benchmark say it: on a CPU, bf16 with the
    units that make it fast, or a warning that it has none; what auto chose."""
    if precision == "auto":
        chosen = resolved_precision(precision, device)
        return f"{precision_label(chosen, device)} (--precision auto)"
    if precision != "bf16" or device.type != "cpu":
        return precision
    units = bf16_units()
    if units:
        return f"bf16 (on {' and '.join(units)})"
    return ("bf16 (warning: this CPU has no bf16 matrix units, amx_bf16 or avx512_bf16, so bf16 "
            "is likely slower than fp32 here)")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, its bf16 units and the threads PyTorch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    units = ", ".join(bf16_units()) or "no bf16 units"
    return f"{model} ({units}), {torch.get_num_threads()} threads"
