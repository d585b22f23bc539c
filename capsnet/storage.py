"""Durable writes: every file the project writes goes through `write_file`.

The bytes go to a temporary file beside the target, which is flushed and fsync'ed, renamed over
the target, and the directory is fsync'ed, so after a crash or power loss the target holds either
its old or its new content, never a mix or nothing. A failure (a full disk, no permission) removes
the temporary file, leaves the old file as it was, and raises WriteError naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import UserError


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
