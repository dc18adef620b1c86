"""The engine's process group: tensor (and expert) parallel ranks of one worker.

Every rank of an engine joins one default ``torch.distributed`` group (NCCL on
GPU, gloo on CPU); TP and EP share it (with EP, attention TP size = EP size).
Without an initialised group everything is rank 0 of 1 and the collectives are
no-ops, so single-device code pays nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

_expert_parallel = False
_single_rank = False


def _active() -> bool:
    return not _single_rank and dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def single_rank() -> Iterator[None]:
    """Build a TP=1 model in a process that also hosts a parallel engine's rank 0: layers see rank 0 of 1."""
    global _single_rank
    previous, _single_rank = _single_rank, True
    try:
        yield
    finally:
        _single_rank = previous


def init(
    rank: int,
    world_size: int,
    port: int,
    device: torch.device,
    expert_parallel: bool,
    timeout_s: float,
    host: str = "127.0.0.1",
) -> None:
    """Join the engine's group over TCP at ``host:port`` (rank 0 hosts the store; a multi-node
    engine passes the leader's address); collectives fail after ``timeout_s``."""
    global _expert_parallel
    if dist.is_available() and dist.is_initialized():
        raise RuntimeError("this process already belongs to a process group; shut the other parallel engine down first")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://{host}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    _expert_parallel = expert_parallel


def shutdown() -> None:
    global _expert_parallel
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _expert_parallel = False


def tp_rank() -> int:
    return dist.get_rank() if _active() else 0


def tp_size() -> int:
    return dist.get_world_size() if _active() else 1


def expert_parallel() -> bool:
    """True when MoE experts are split across the ranks instead of each expert being TP-sharded."""
    return _expert_parallel and tp_size() > 1


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over TP ranks in place; returns it."""
    if tp_size() > 1:
        dist.all_reduce(x)
    return x


def all_reduce_min(value: int, device: torch.device) -> int:
    """The smallest ``value`` over the ranks (e.g. a KV block count every rank can hold)."""
    if tp_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` (rank order)."""
    world = tp_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


def gather_list(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``x`` on every rank, in rank order."""
    if tp_size() == 1:
        return [x]
    parts = [torch.empty_like(x) for _ in range(tp_size())]
    dist.all_gather(parts, x.contiguous())
    return parts


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if tp_size() > 1:
        dist.broadcast(x, src)
    return x
