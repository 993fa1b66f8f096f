"""Data-parallel training under ``torchrun``: process-group setup and the few collectives the runner needs.

Launched by ``torchrun --nproc_per_node=N`` the environment holds ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; the runner then wraps the model in DistributedDataParallel (gloo: the experiments
train on the CPU, so there is nothing for nccl to carry) and shards the training data. Rank 0 alone
writes results, checkpoints and progress bars. Without
``torchrun`` every function here is a no-op for a world of one process.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def requested_world_size() -> int:
    """The number of processes ``torchrun`` launched (1 without it), before the group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as ``torchrun`` launched it (0 without it), also once the group is left."""
    return int(os.environ.get("RANK", "0"))


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes; ``False`` when not launched by it."""
    if requested_world_size() <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group(backend="gloo")
    return True


def shutdown(*, together: bool) -> None:
    """Leave the process group. ``together``: every process is leaving cleanly, so wait for all of
    them first; a process that tears its connections down while another still holds them (rank 0
    writing the report) can abort in gloo's teardown. After an error, leave at once: the others may
    never arrive, and torchrun stops them when this one exits."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any] | None:
    """Every rank's ``value`` in rank order on rank 0, ``None`` on the others (any picklable object)."""
    if not dist.is_initialized():
        return [value]
    box = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(value, box, dst=0)
    return box
