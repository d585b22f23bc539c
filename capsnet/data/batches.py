"""Batches of a split on the training device: shuffled, shifted, cropped, every batch of one
shape."""
from __future__ import annotations

import copy
from typing import Iterator, NamedTuple

import torch
from torch import Tensor

from .records import Dataset, Split


class Sample(NamedTuple):
    """One batch: the inputs, their labels, what the reconstructions are scored against, and
    which examples count. Every batch of a pass has batch_size examples (CUDA graphs replay one
    shape): a pass's last batch is filled up with its first examples, weighted 0, which the
    loss and the meters leave out."""
    images: Tensor  # (B, C, H, W) float in [0, 1]
    labels: Tensor  # (B,) class indices; (B, K) for K digits per image, in ascending order
    targets: Tensor  # the images themselves; (B, K, C, H, W) each digit alone for K digits
    weights: Tensor  # (B,) float: 1 for the pass's examples, 0 for the filling

    def real(self) -> Sample:
        """The examples that count, without the filling (a host sync: not for the batch loop)."""
        keep = self.weights > 0
        return Sample(*(part[keep] for part in self))


def shift_images(padded: Tensor, offsets: Tensor, size: int) -> Tensor:
    """Crop each zero-padded image at its own offset: (B, C, H+2s, W+2s), (B, 2) -> (B, C, H, W)."""
    batch, channels = padded.shape[:2]
    span = torch.arange(size, device=padded.device)
    rows = (offsets[:, 0:1] + span)[:, None, :, None]  # (B, 1, H, 1)
    cols = (offsets[:, 1:2] + span)[:, None, None, :]  # (B, 1, 1, W)
    b = torch.arange(batch, device=padded.device)[:, None, None, None]
    c = torch.arange(channels, device=padded.device)[None, :, None, None]
    return padded[b, c, rows, cols]


class Plan(NamedTuple):
    """One pass of a process, drawn on the host: which examples, in which batches."""
    order: Tensor  # (batches * batch_size,) example indices
    drawn: list[Tensor]  # what else each example needs (offsets, partners), the same length
    weights: Tensor  # (batches * batch_size,) 1, or 0 for the filling of the last batch


class Batches:
    """Iterable of Sample batches (images float in [0, 1]) of a Split, already on its device.

    Each pass draws a new order and, with `shift` > 0, a new offset of up to `shift` pixels in
    each direction per image, from `generator` (a CPU generator, so runs are reproducible).
    Process `rank` of `world` takes every world-th example of that order, from the rank-th on
    (DistributedSampler's split): with the same generator state in every process, the union of
    the processes' k-th batches is the k-th batch of one process with world x batch_size. With
    `even`, the order is first padded by its own first examples to a multiple of `world`, so that
    every process has the same number of batches (as training in step needs). With `crop`, each
    image is cut to crop x crop (after the shift's padding): at a random place in a shuffled
    (training) pass, in the centre in an ordered (test) pass.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool = False, shift: int = 0,
                 generator: torch.Generator | None = None, rank: int = 0, world: int = 1,
                 even: bool = False, crop: int = 0) -> None:
        self.split, self.batch_size, self.shuffle, self.shift = split, batch_size, shuffle, shift
        self.generator, self.rank, self.world, self.even = generator, rank, world, even
        self.size = crop or split.images.shape[-1]  # side of the images served
        self.span = split.images.shape[-1] + 2 * shift - self.size  # offsets 0..span
        self.padded = (torch.nn.functional.pad(split.images, (shift,) * 4) if shift
                       else split.images)  # (N, C, H+2s, W+2s) uint8

    @classmethod
    def of(cls, entry: Dataset, split: Split, batch_size: int, train: bool,
           generator: torch.Generator, shift: int, crop: int, rank: int, world: int,
           limit: int) -> Batches:
        """make_batches' batches of a dataset served by this class (`limit`: applied when the
        split was read)."""
        return cls(split, batch_size, shuffle=train, shift=shift if train else 0,
                   generator=generator, rank=rank, world=world, even=train, crop=crop)

    def to(self, device: torch.device) -> Batches:
        """These batches served from `device`: the same passes (a plan drawn by either serves
        both), with the split and its padded copy moved there."""
        moved = copy.copy(self)
        moved.split, moved.padded = self.split.to(device), self.padded.to(device)
        return moved

    @property
    def count(self) -> int:
        """Examples in a pass, over all processes."""
        return len(self.split)

    def describe(self) -> str:
        """The examples of a pass, in words."""
        return f"{self.count:,} images"

    @property
    def examples(self) -> int:
        """Examples this process takes in a pass."""
        count = self.count
        if self.even:
            count = -(-count // self.world) * self.world
        return len(range(self.rank, count, self.world))

    def __len__(self) -> int:
        return -(-self.examples // self.batch_size)

    def __iter__(self) -> Iterator[Sample]:
        return self.starting_at(0)

    def starting_at(self, first: int) -> Iterator[Sample]:
        """One pass from batch `first` on: the order and shifts are drawn for the whole pass, as
        by __iter__, so the batches are those that a whole pass would give from there."""
        yield from self.serve_plan(self.plan(), first)

    def plan(self) -> Plan:
        """A pass drawn on the host (the only part that reads data back: a canvas's partners):
        this process's share of the order, what else each example needs, and the weights, the
        last batch filled up to batch_size with weight-0 copies of the share's first examples."""
        count = self.count
        order, drawn = self.draw(count)
        if self.even and count % self.world:
            extra = self.world - count % self.world
            order = torch.cat([order, order[:extra]])
            drawn = [torch.cat([d, d[:extra]]) for d in drawn]
        order, drawn = order[self.rank::self.world], [d[self.rank::self.world] for d in drawn]
        weights = torch.ones(len(order))
        fill = -len(order) % self.batch_size
        if fill and len(order):
            more = torch.arange(fill) % len(order)
            order, weights = torch.cat([order, order[more]]), torch.cat([weights, torch.zeros(fill)])
            drawn = [torch.cat([d, d[more]]) for d in drawn]
        return Plan(order, drawn, weights)

    def serve_plan(self, plan: Plan, first: int = 0) -> Iterator[Sample]:
        """The batches of a plan from batch `first` on, made on the split's device: nothing
        here waits for the device."""
        device = self.split.labels.device
        order, weights = plan.order.to(device), plan.weights.to(device)
        drawn = [d.to(device) for d in plan.drawn]
        for start in range(first * self.batch_size, len(order), self.batch_size):
            stop = start + self.batch_size
            yield Sample(*self.serve(order[start:stop], *(d[start:stop] for d in drawn)),
                         weights[start:stop])

    def draw(self, count: int) -> tuple[Tensor, list[Tensor]]:
        """A pass's order (N,) and what else each example needs, here its offset (N, 2)."""
        order = (torch.randperm(count, generator=self.generator) if self.shuffle
                 else torch.arange(count))  # (N,)
        random = self.span and self.shuffle
        offsets = (torch.randint(0, self.span + 1, (count, 2), generator=self.generator) if random
                   else torch.full((count, 2), self.span // 2))  # (N, 2)
        return order, [offsets]

    def serve(self, index: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Images, labels and targets of the examples `index`, on the device."""
        images = (shift_images(self.padded[index], offsets, self.size) if self.span
                  else self.padded[index])
        images = images.float().div_(255.0)
        return images, self.split.labels[index], images


def head(batches: Batches, count: int) -> Sample:
    """The first `count` examples of a pass (fewer if the pass is shorter), as one Sample."""
    samples, taken = [], 0
    for sample in batches:
        sample = sample.real()
        samples.append(sample)
        taken += len(sample.labels)
        if taken >= count:
            break
    return Sample(*(torch.cat(parts)[:count] for parts in zip(*samples)))


def make_batches(entry: Dataset, split: Split, batch_size: int, train: bool,
                 generator: torch.Generator, shift: int = 0, crop: int = 0, rank: int = 0,
                 world: int = 1, limit: int = 0) -> Batches:
    """The one way to batch a dataset's split: for training shuffled, shifted by up to `shift`
    and even across the `world` processes; for testing in order and uneven (every example once).
    A dataset whose entry names a `batches` class is served by it (canvas.py
    places digits itself, without shift or crop, and a test pass takes its first `limit` digits
    with partners from the whole split; smallnorb.py crops and jitters its pairs)."""
    kind = entry.batches or Batches
    return kind.of(entry, split, batch_size, train, generator, shift, crop, rank, world, limit)
