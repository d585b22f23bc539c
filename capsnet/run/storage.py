"""Durable writes: every file the project writes goes through `write_file`.

The bytes go to a temporary file beside the target, which is flushed and fsync'ed, renamed over
the target, and the directory is fsync'ed, so after a crash or power loss the target holds either
its old or its new content, never a mix or nothing. A failure (a full disk, no permission) removes
the temporary file, leaves the old file as it was, and raises WriteError naming the file.

Checkpoints are written through it with a BLAKE2 digest of all their tensors and values, and
loaded only when intact: torch.load reads a file with flipped bits without complaint.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..compat import WEIGHTS_FORMAT, upgraded
from ..errors import UserError


class WriteError(UserError):
    """A file or directory could not be written: reported as one line naming it and the cause."""


def cause(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"could not create the directory {path} ({cause(error)})") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Sink:
    """A file-like object over a file descriptor for writers such as torch.save: it writes with
    os.write and keeps the OSError of a failed write, which torch.save reports as a RuntimeError."""

    def __init__(self, fd: int) -> None:
        self.fd, self.error = fd, None

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as error:
            self.error = error
            raise
        return len(data)

    def flush(self) -> None:
        pass


def write_file(path: Path, data: bytes | Callable[[Sink], None]) -> None:
    """Replace `path` durably (temporary file, fsync, rename, fsync of the folder) with `data`,
    or with what `data(sink)` writes into the temporary file."""
    path = Path(path)
    make_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            sink = Sink(fd)
            try:
                data(sink) if callable(data) else sink.write(data)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise WriteError(f"could not write {path} ({cause(error)})") from None


REQUIRED = ("model", "model_args", "optimizer", "scheduler", "epoch", "batch", "step",
            "best_accuracy", "meters", "processes", "config", "classes", "torch_rng", "data_rng",
            "digest")


def to_cpu(value: Any) -> Any:
    """The same nested dicts, lists and tuples with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def digest(value: Any) -> str:
    """A digest of nested dicts, lists, tuples, tensors (dtype, shape and bytes) and scalars."""
    h = hashlib.blake2b(digest_size=32)

    def visit(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            h.update(f"tensor{item.dtype}{tuple(item.shape)}".encode())
            h.update(item.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(item, dict):
            h.update(f"dict{len(item)}".encode())
            for key, child in item.items():
                h.update(repr(key).encode())
                visit(child)
        elif isinstance(item, (list, tuple)):
            h.update(f"{type(item).__name__}{len(item)}".encode())
            for child in item:
                visit(child)
        else:
            h.update(repr(item).encode())

    visit(value)
    return h.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any], *more: Path) -> None:
    """Write `payload` (on the CPU, with its digest) durably to `path`, then to each of `more`,
    serialised once; WriteError on failure (the files after the failed one are not written)."""
    payload = to_cpu(payload)
    payload["digest"] = digest(payload)
    serialised = io.BytesIO()
    torch.save(payload, serialised)
    for target in (path, *more):
        write_file(target, serialised.getvalue())


# A trained-weights file (capsnet.weights): the model alone, in float16, for evaluation and
# prediction; a checkpoint's other parts (optimiser, schedule, meters, random states) are not in it.
WEIGHTS_PARTS = ("model", "model_args", "config", "classes", "epoch")
WEIGHTS_KEYS = ("format", *WEIGHTS_PARTS, "digest")


def save_weights(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint's model as a trained-weights file: floating tensors in float16 (and
    which epochs' average they are, for a model that is one)."""
    parts = {k: checkpoint[k] for k in WEIGHTS_PARTS + ("averaged",) if k in checkpoint}
    parts["model"] = {k: v.half() if v.is_floating_point() else v
                      for k, v in parts["model"].items()}
    save_checkpoint(path, {"format": WEIGHTS_FORMAT, **parts})


def load_checkpoint(path: str | Path, weights: bool = False) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, or raise UserError naming the file and what is wrong.
    With `weights`, a trained-weights file is taken too, and given back with float32 weights
    and only its WEIGHTS_PARTS."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory: name a file in it, its last.pt or "
                        "best.pt")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist (expected a last.pt or best.pt file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged files
        raise UserError(f"checkpoint {path} is not a readable capsnet checkpoint "
                        f"({type(error).__name__})") from None
    trained = isinstance(payload, dict) and payload.get("format") == WEIGHTS_FORMAT
    if trained and not weights:
        raise UserError(f"{path} holds trained weights only, without the optimiser's state: it "
                        "can be evaluated (--eval) and used for predictions, not resumed")
    required = WEIGHTS_KEYS if trained else REQUIRED
    if not isinstance(payload, dict) or any(key not in payload for key in required):
        missing = required if not isinstance(payload, dict) else \
            [key for key in required if key not in payload]
        raise UserError(f"checkpoint {path} is not a capsnet checkpoint of this version "
                        f"(it lacks {', '.join(missing)})")
    saved = payload.pop("digest")
    if digest(payload) != saved:
        raise UserError(f"checkpoint {path} is damaged: its contents do not match the digest "
                        "written with them")
    payload = upgraded(payload)
    if trained:
        payload["model"] = {k: v.float() if v.is_floating_point() else v
                            for k, v in payload["model"].items()}
    return payload


def load_state(target: nn.Module | Any, state: Any, what: str) -> None:
    """target.load_state_dict(state), with any mismatch reported as one UserError line."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise UserError(f"the checkpoint's {what} does not fit ({detail[:300]})") from None
