"""Data-parallel training through ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc-per-node N -m energyat_core train ...`` starts N processes; each
reads its rank from the environment that torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), joins the process group (NCCL on GPUs, gloo on CPUs), trains on its
shard of every batch and all-reduces the gradients after the backward pass. Multi-node
runs use torchrun's rendezvous flags (``--nnodes``, ``--node-rank``,
``--rdzv-endpoint``); nothing else changes. Without torchrun, a run is one process.

Why gradients are reduced after the backward pass rather than by wrapping the model in
``DistributedDataParallel``: losses such as TRADES, bridged AT and JEAT forward the
model several times (clean, adversarial, bridge points, SGLD samples) before a single
backward, which DDP's bucketed hooks do not allow, and an adversarial-training step
spends ~10x more time in the attack than in the update, so overlapping the one
all-reduce with the backward pass would gain little.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes the run directory."""
        return self.rank == 0


def from_environment() -> DistInfo:
    """Read torchrun's variables; a plain process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group (once) and return the device this rank uses."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in a single process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of ``params`` over ranks with one flat all-reduce."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def average_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks."""
    if not info.enabled:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= info.world_size


def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if not info.enabled:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(info: DistInfo) -> None:
    """Leave the process group at the end of a run (a no-op in a single process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
