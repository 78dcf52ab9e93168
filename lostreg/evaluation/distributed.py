"""Several processes on one run (``torchrun --nproc_per_node=N -m lostreg eval ...``): who does what.

Read from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), as dinov2's
distributed feature extraction does. Each rank takes a contiguous, unpadded shard of the images
still to do, so every image is processed exactly once (torch's ``DistributedSampler`` pads by
repeating images: wrong for CorLoc); ranks write their own prediction files through
:class:`lostreg.rundir.RunDir` and rank 0 merges them and writes the metrics.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "shard"]

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 when started without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "DistEnv":
        """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device of this rank: ``cuda:<local rank>`` for ``auto``/``cuda`` when several GPUs share
        a node; the requested device otherwise."""
        if self.is_distributed and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def init(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, gloo on the CPU); nothing without torchrun."""
        if self.is_distributed and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            # Long timeout: a barrier waits for the slowest rank's whole shard.
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=12))

    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if self.is_distributed and dist.is_initialized():
            dist.barrier()

    def share(self, value: object) -> object:
        """Rank 0's ``value`` on every rank (each rank passes its own; only rank 0's is kept)."""
        if not (self.is_distributed and dist.is_initialized()):
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def finish(self) -> None:
        """Leave the process group."""
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The contiguous part of ``items`` that ``rank`` of ``world_size`` processes; no padding, no overlap.

    Sizes differ by at most one (the first ``len % world_size`` ranks take one more); the shards
    concatenated in rank order are ``items``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return list(items[start:start + base + (rank < extra)])
