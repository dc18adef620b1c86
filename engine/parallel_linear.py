"""Tensor-parallel linear layers; each parameter loads its shard from the full HF tensor.

At TP size 1 every shard is the whole tensor. Column-parallel layers split the
output features (no communication), row-parallel layers split the input
features and all-reduce their partial sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine import distributed
from engine.weight_loader import ShardId, set_weight_loader


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, except a decode step of a few tokens on a GPU runs engine/triton_gemv.py's kernel."""
    if x.is_cuda and x.dim() == 2 and x.shape[0] <= 16:  # triton_gemv.MAX_M, read without importing triton
        from engine import triton_gemv  # on first CUDA use: importing triton early would fix TRITON_INTERPRET

        if triton_gemv.enabled():
            return triton_gemv.skinny_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def _tp_size(parallel: bool) -> int:
    return distributed.tp_size() if parallel else 1


def _divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"{what}={n} is not divisible by tensor-parallel size {d}; choose a TP size that divides it")
    return n // d


class LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, tp_dim: int | None, parallel: bool = True) -> None:
        super().__init__()
        # parallel=False: a whole layer on this rank (an expert owned by one expert-parallel rank)
        self.tp_rank = distributed.tp_rank() if parallel else 0
        self.tp_size = _tp_size(parallel)
        self.tp_dim = tp_dim
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        set_weight_loader(self.weight, self.weight_loader)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            set_weight_loader(self.bias, self.weight_loader)
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, full: torch.Tensor, shard_id: ShardId = None, /) -> None:
        if self.tp_dim is not None and self.tp_dim < full.dim():
            size = param.shape[self.tp_dim]
            full = full.narrow(self.tp_dim, self.tp_rank * size, size)
        param.data.copy_(full)


class ReplicatedLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias, tp_dim=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class ColumnParallelLinear(LinearBase):
    """y = x W^T with W split by output rows; the output stays sharded."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, parallel: bool = True) -> None:
        tp = _tp_size(parallel)
        super().__init__(in_features, _divide(out_features, tp, "out_features"), bias, tp_dim=0, parallel=parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs fused into one matmul (e.g. gate_proj + up_proj)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False, parallel: bool = True) -> None:
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias, parallel)

    def weight_loader(self, param: nn.Parameter, full: torch.Tensor, shard_id: ShardId = None, /) -> None:
        if not isinstance(shard_id, int):
            raise ValueError(f"a fused column-parallel weight loads by output index, not {shard_id!r}")
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        part = full.narrow(0, self.tp_rank * size, size)
        param.data.narrow(0, offset, size).copy_(part)


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection sharded by heads; KV heads are replicated when TP > num_kv_heads."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False) -> None:
        tp = distributed.tp_size()
        self.head_dim = head_dim
        self.num_heads = _divide(num_heads, tp, "num_attention_heads")
        if num_kv_heads >= tp:
            self.num_kv_heads = _divide(num_kv_heads, tp, "num_key_value_heads")
            self.kv_replicas = 1
        else:
            self.num_kv_heads = 1
            self.kv_replicas = _divide(tp, num_kv_heads, "tensor-parallel size over num_key_value_heads")
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, out, bias)

    def weight_loader(self, param: nn.Parameter, full: torch.Tensor, shard_id: ShardId = None, /) -> None:
        if shard_id not in ("q", "k", "v"):
            raise ValueError(f"a fused qkv weight loads shard 'q', 'k' or 'v', not {shard_id!r}")
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, size, rank = 0, q_size, self.tp_rank
        else:
            offset = q_size if shard_id == "k" else q_size + kv_size
            size, rank = kv_size, self.tp_rank // self.kv_replicas
        param.data.narrow(0, offset, size).copy_(full.narrow(0, rank * size, size))


class RowParallelLinear(LinearBase):
    """y = x W^T with W split by input columns; partial sums are all-reduced."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, parallel: bool = True) -> None:
        tp = _tp_size(parallel)
        super().__init__(_divide(in_features, tp, "in_features"), out_features, bias, tp_dim=1, parallel=parallel)

    def weight_loader(self, param: nn.Parameter, full: torch.Tensor, shard_id: ShardId = None, /) -> None:
        if param.dim() == 1:  # bias: added once, on rank 0 only
            param.data.copy_(full if self.tp_rank == 0 else torch.zeros_like(full))
            return
        super().weight_loader(param, full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)
        return distributed.all_reduce(y) if self.tp_size > 1 else y
