"""torch.distributed glue for torchrun: set-up from its environment, rank queries, reductions, and
BatchNorm over the global batch (--sync-bn).

Without torchrun every helper is a no-op, so the same training loop serves one process or many.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

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


class AllReduceSum(torch.autograd.Function):
    """A sum over the ranks that gradients flow back through: each rank's input receives the sum of
    every rank's output gradient (torch.distributed.nn.functional.all_reduce, which is deprecated
    for a private module's)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return AllReduceSum.apply(grad)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, training in a process group of more than one rank, normalises with the mean
    and variance of the whole global batch instead of this rank's shard (torch's nn.SyncBatchNorm
    runs on CUDA only; this one on gloo too). The same parameters, buffers and state_dict keys as
    BatchNorm2d, so a checkpoint is a plain model's; in eval mode, or alone, it is BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        var, mean = torch.var_mean(xs, dim=(0, 2, 3), correction=0)  # this shard's, per channel
        n = xs.new_full((1,), xs.numel() // xs.size(1))
        # One all-reduce of the shards' per-channel sums, sums of squares and counts; the gradients of
        # the global statistics flow back to every shard through it.
        stats = AllReduceSum.apply(torch.cat([mean * n, (var + mean * mean) * n, n]))
        channels, count = x.size(1), stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels:-1] / count - mean * mean).clamp(min=0)  # biased: what BatchNorm divides by
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.bias is not None else 0)
        return (xs * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """As BatchNorm2d: `momentum`, or with momentum None the cumulative average over
        num_batches_tracked; the running variance is the unbiased one."""
        factor = 0.0
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        elif self.momentum is not None:
            factor = self.momentum
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def sync_batchnorm(model: nn.Module) -> int:
    """Swap `model`'s BatchNorm2d layers, in place, for SyncBatchNorm2d holding the same parameters
    and buffers (the optimizer's tensors stay the model's); returns how many."""
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.BatchNorm2d]
    for parent, name, bn in found:
        sync = SyncBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        sync.weight, sync.bias = bn.weight, bn.bias
        sync.running_mean, sync.running_var, sync.num_batches_tracked = (bn.running_mean, bn.running_var,
                                                                         bn.num_batches_tracked)
        sync.train(bn.training)
        setattr(parent, name, sync)
    return len(found)
