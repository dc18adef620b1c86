"""Tensor-parallel group helpers: no-ops at world size 1.

When ``torch.distributed`` is initialised, the default group is the TP group
(one engine per process group); otherwise rank 0 of 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def tp_rank() -> int:
    return dist.get_rank() if _active() else 0


def tp_size() -> int:
    return dist.get_world_size() if _active() else 1


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over TP ranks in place; returns it."""
    if tp_size() > 1:
        dist.all_reduce(x)
    return x


def all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` (rank order)."""
    world = tp_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)
