"""One process or many under ``torchrun``: the process group, this process's device, and collectives
that are no-ops for a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over the processes in place (asynchronously on the GPU; no host sync)."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def setup(device: str | None = None) -> Context:
    """Joins the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on the CPU).

    device: "cpu", "cuda" or None (CUDA when available). Under torchrun each process takes GPU
    ``LOCAL_RANK``.
    """
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local)
        where = torch.device("cuda", local)
    else:
        where = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return Context(rank, world, where)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
