"""Digits placed on a black canvas, made on the training device: mnist40 (one digit anywhere on
40x40) and MultiMNIST (two digits of different classes, each shifted up to 4 px, on 36x36).

A training pass draws new places (and, for two digits, new partners) from the run's generator;
a test pass draws them from a fixed seed, so every run and every epoch tests the same examples.
Each example takes its first digit from the split in the pass's order; the others are drawn
uniformly from the digits of classes not yet in the example. A test pass over only the first N
digits (--test-samples N) draws everything for the whole split and keeps the first N examples, so
its examples are the first N of the full test set: partners come from all test digits. Overlapping digits are added and
clipped at 255, as in the authors' MultiMNIST generator, so that our numbers compare with theirs.
A pixel-wise max would differ only where two strokes overlap: there the sum is brighter, up to
full ink, where the max keeps the brighter stroke alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .records import Dataset, Split
from .batches import Batches, shift_images
from ..errors import UserError

TEST_SEED = 20171026  # fixed: every run tests on the same examples


class CanvasBatches(Batches):
    """Batches of `objects` digits of a Split placed on `canvas` x `canvas` black images.

    Every digit lands at a uniformly random place within the canvas (offsets 0..canvas-side in
    each direction, independently). Labels are (B,) for one digit, and (B, K) in ascending order
    for K digits, with the targets (B, K, C, canvas, canvas) each digit alone at its place."""

    def __init__(self, split: Split, batch_size: int, canvas: int, objects: int = 1,
                 shuffle: bool = False, generator: torch.Generator | None = None,
                 rank: int = 0, world: int = 1, even: bool = False, limit: int = 0) -> None:
        side = split.images.shape[-1]
        if canvas < side:
            raise ValueError(f"a canvas of {canvas} cannot hold images of {side}")
        if objects > 1 and len(split) and split.labels.unique().numel() < objects:
            raise UserError(f"{objects} digits of different classes per example need at least "
                            f"{objects} classes among the {len(split)} images used")
        super().__init__(split, batch_size, shuffle, 0, generator, rank, world, even)
        self.objects, self.size, self.span = objects, canvas, canvas - side  # offsets 0..span
        self.limit = min(limit, len(split)) if limit else len(split)  # first digits of a pass

    @classmethod
    def of(cls, entry: Dataset, split: Split, batch_size: int, train: bool,
           generator: torch.Generator, shift: int, crop: int, rank: int, world: int,
           limit: int) -> CanvasBatches:
        """make_batches' batches of a canvas dataset: its canvas and digits per example from
        its entry, `limit` first digits of a test pass (--shift and --crop do not apply)."""
        return cls(split, batch_size, entry.canvas, entry.objects, shuffle=train,
                   generator=generator, rank=rank, world=world, even=train, limit=limit)

    @property
    def count(self) -> int:
        return self.limit

    def describe(self) -> str:
        if self.objects == 1:
            return f"{self.count:,} images"
        whole = len(self.split)
        firsts = (f"the first {self.count:,} of {whole:,} digits" if self.count < whole
                  else f"all {whole:,} digits")
        return f"{self.count:,} pairs ({firsts}, partners from all {whole:,})"

    def draw(self, count: int) -> tuple[Tensor, list[Tensor]]:
        """Order (N,), offsets (N, K, 2) and partners (N, K-1) of a pass; an ordered (test) pass
        draws them for the whole split, from the fixed seed, and keeps the first `count`."""
        if self.shuffle:
            order = torch.randperm(count, generator=self.generator)
            offsets = torch.randint(0, self.span + 1, (count, self.objects, 2),
                                    generator=self.generator)
            return order, [offsets, self.partners(order, self.generator)]
        generator, whole = torch.Generator().manual_seed(TEST_SEED), len(self.split)
        order = torch.arange(whole)
        offsets = torch.randint(0, self.span + 1, (whole, self.objects, 2), generator=generator)
        return order[:count], [offsets[:count], self.partners(order, generator)[:count]]

    def partners(self, order: Tensor, generator: torch.Generator) -> Tensor:
        """For each first digit, K-1 more of classes not yet in its example: (N, K-1)."""
        labels = self.split.labels.cpu()
        chosen = [order]
        for _ in range(self.objects - 1 if len(order) else 0):
            pick = torch.randint(0, len(order), (len(order),), generator=generator)
            clash = torch.zeros(len(order), dtype=torch.bool)
            for earlier in chosen:
                clash |= labels[pick] == labels[earlier]
            while clash.any():  # redraw only the clashing ones, until none clash
                where = clash.nonzero().flatten()
                pick[where] = torch.randint(0, len(order), (len(where),), generator=generator)
                clash[where] = False
                for earlier in chosen:
                    clash[where] |= labels[pick[where]] == labels[earlier[where]]
            chosen.append(pick)
        return torch.stack(chosen[1:], dim=1) if len(chosen) > 1 else order.new_zeros(len(order), 0)

    def serve(self, index: Tensor, offsets: Tensor, partners: Tensor
              ) -> tuple[Tensor, Tensor, Tensor]:
        batch = len(index)
        every = torch.cat([index[:, None], partners], dim=1)  # (B, K) example indices
        digits = self.split.images[every.flatten()]  # (B*K, C, side, side) uint8
        padded = F.pad(digits, (self.span,) * 4)  # a crop of it can hold the digit anywhere
        placed = shift_images(padded, offsets.reshape(-1, 2), self.size)  # (B*K, C, S, S)
        placed = placed.view(batch, self.objects, *placed.shape[1:])
        images = placed.sum(dim=1, dtype=torch.int16).clamp_(max=255).float().div_(255.0)
        labels = self.split.labels[every]  # (B, K)
        if self.objects == 1:
            return images, labels[:, 0], images
        labels, slots = labels.sort(dim=1)
        placed = placed[torch.arange(batch, device=index.device)[:, None], slots]
        return images, labels, placed.float().div_(255.0)
