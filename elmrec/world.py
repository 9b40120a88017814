"""The processes of one training, as training sees them: this one's rank, how many, and the few collectives
training needs. One process (no process group, or one of size 1) is the world of size 1, where every collective
is a no-op: the same code trains in one process and under `torchrun` (elmrec.distributed starts those).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process, 0 .. size - 1; rank 0 writes every file
    size: int = 1

    @classmethod
    def current(cls) -> World:
        """The initialised default process group, else the world of one process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, last/, history.json and reports epochs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This process's rows of a batch every process holds whole: every size-th one from its rank (balanced
        counts; empty when the batch has fewer rows than processes)."""
        return rows[self.rank::self.size]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over the processes, in place (the same value on each)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def from_main(self, value: T) -> T:
        """Rank 0's `value` (any picklable object), on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, model: nn.Module, find_unused: bool) -> nn.Module:
        """`model` under DistributedDataParallel (its gradients averaged over the processes in each backward), or
        `model` itself in one process. `find_unused`: some steps leave parameters without a gradient (ELMRec with
        two tasks: a step trains one task, the other's prompts and ww table rest); those keep grad None on every
        process, as in one process, so AdamW skips them alike."""
        if not self.distributed:
            return model
        with warnings.catch_warnings():
            # broadcast_buffers=False is deprecated for forward_sync_buffers=False, which still syncs buffers at
            # construction: ELMRec's sparse adjacency buffer cannot be broadcast (and every process builds it).
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
            return DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=find_unused)


ONE_PROCESS = World()  # a training without a process group
