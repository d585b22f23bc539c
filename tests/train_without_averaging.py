"""train.py with DistributedDataParallel's gradient averaging switched off (each process keeps its
own gradient): the control case of the distributed equivalence test."""
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402


class Unaveraged(DistributedDataParallel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

        def keep_local(state, bucket):
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future
        self.register_comm_hook(None, keep_local)


if __name__ == "__main__":
    import capsnet.run.build
    capsnet.run.build.DistributedDataParallel = Unaveraged
    sys.exit(train.main())
