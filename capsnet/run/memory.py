"""Allocator settings for fast CPU training, applied by the commands that train (train.py,
capsnet.bench, capsnet.experiments and the memory probe) before their first tensor.

A training step allocates and frees tensors of tens to hundreds of MB. By default glibc hands
each one back to the kernel when it is freed, and the next step's allocation page-faults it in
again. Both settings below can be turned off; BENCHMARKS.md measures each of them.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
KEEP_BELOW = 1 << 30  # bytes: blocks up to 1 GiB come from the heap, which is never trimmed


def tune_allocator() -> None:
    """Huge pages for PyTorch's large CPU tensors (THP_MEM_ALLOC_ENABLE=0 turns this off),
    and, on glibc, freed memory kept for reuse rather than returned to the kernel after every
    step (CAPSNET_KEEP_FREED_MEMORY=0 turns this off). The process then keeps its peak memory."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if os.environ.get("CAPSNET_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_BELOW)
    except (OSError, AttributeError):  # not glibc: keep its defaults
        pass
