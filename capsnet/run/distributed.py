"""Several processes through torchrun: NCCL on CUDA (a GPU per process), gloo on the CPU.

`python train.py` alone is one process and none of this does anything. Under torchrun
(WORLD_SIZE > 1), every process joins one process group; rank 0 alone writes files, prints and
talks to the dashboard.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ..errors import UserError

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("CAPSNET_COLLECTIVE_TIMEOUT", "600")))


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives' tensors live

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over all processes (float64, on the CPU), or `values` alone."""
        values = values.to(torch.float64)
        if not self.distributed:
            return values
        on_device = values.to(self.device)
        dist.all_reduce(on_device)
        return on_device.cpu()

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def join(device_choice: str) -> World:
    """Join the process group when started by torchrun; return this process's World."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {rank} wants GPU {local_rank}, but this machine has "
                            f"{torch.cuda.device_count()}; start at most that many per machine")
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT,
                                device_id=device if cuda else None)
    return World(rank, size, local_rank, device)


_staying = False  # inside staying(): the group outlives each run


@contextlib.contextmanager
def staying() -> Iterator[None]:
    """Inside, the runs of one process (capsnet.experiments) share one process group: leave()
    waits for the other processes but keeps the group, which is left at the end."""
    global _staying
    _staying = True
    try:
        yield
    finally:
        _staying = False
    leave()


def leave() -> None:
    """Leave the process group together with the other processes, after a run that ended well.
    (After a failure a process just exits, and torchrun ends the others.)"""
    if dist.is_initialized():
        # A finished run's DDP wrapper sits in reference cycles (the Trainer and its Engine's
        # hooks): free it now, while the group and the interpreter are alive. Freed at exit
        # instead, its reducer can abort the process ("terminate called").
        gc.collect()
        dist.barrier()
        if not _staying:
            dist.destroy_process_group()
