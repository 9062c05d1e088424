"""torch.distributed glue for torchrun: set-up from its environment, rank queries, reductions.

Without torchrun every helper is a no-op, so the same training loop serves one process or many.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from ..errors import ConfigError


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device, timeout_s: float = 300) -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # A bounded timeout: if a peer dies, collectives fail instead of hanging forever.
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def check_batch(batch_size: int, world: int | None = None, name: str = "the world size") -> None:
    """The global batch splits evenly across the ranks (this process group's, or `world` about to start)."""
    world = world_size() if world is None else world
    if batch_size % world:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by {name} {world}; "
                          f"the global batch is split evenly across ranks")


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
