"""Micro-batches (--micro-batch): a batch computed in parts of at most `size` examples. The
training loop (capsnet.training) sums the parts' gradients into the whole batch's; evaluation and
the dashboard join the parts' outputs into the whole batch's."""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence, TypeVar

import torch
from torch import Tensor

Record = TypeVar("Record", bound=NamedTuple)


def part_size(batch: int, largest: int) -> int:
    """Images per part when at most `largest` fit: as few parts as that allows, as even as they
    can be (128 with 20 fitting: 7 parts of at most 19), so each needs as little as it can."""
    return math.ceil(batch / math.ceil(batch / largest))


def step_images(batch: int, micro_batch: int) -> int:
    """Images one forward and backward pass takes at once: a batch, or its parts (0: whole)."""
    return min(micro_batch or batch, batch)


def slices(count: int, size: int) -> list[slice]:
    """Parts of at most `size` of `count` examples, in order; the last may be smaller."""
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def split(record: Record, size: int) -> list[Record]:
    """A record of batch-first tensors (a Sample) cut into parts of at most `size` examples."""
    return [type(record)(*(None if t is None else t[part] for t in record))
            for part in slices(len(record[0]), size)]


def joined(records: Sequence[Record]) -> Record:
    """The parts' records (a CapsNetOutput per part) as one of the whole batch: each field's
    tensors concatenated along the batch, detached (None stays None)."""
    return type(records[0])(*(None if fields[0] is None else torch.cat([t.detach() for t in fields])
                              for fields in zip(*records)))


def forward_in_parts(network: Callable[..., Record], images: Tensor, size: int,
                     *args: Any) -> Record:
    """network(images, *args) computed on parts of at most `size` images (0: all at once)."""
    if not size or len(images) <= size:
        return network(images, *args)
    return joined([network(images[part], *args) for part in slices(len(images), size)])
