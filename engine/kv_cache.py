"""The paged KV pool: per-layer K and V tensors sized from a memory budget, and block copies.

Per layer: k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim].
A transfer row (one store object) is one block for all layers:
    [num_layers, 2, block_size, num_kv_heads, head_dim]  (2 = K, V)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class KVCacheSpec:
    num_layers: int
    block_size: int
    num_kv_heads: int  # per TP shard
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem


class KVCache:
    def __init__(self, spec: KVCacheSpec, num_blocks: int, device: torch.device, scratch_block: bool = False) -> None:
        self.spec = spec
        self.num_blocks = num_blocks  # blocks the block manager hands out: 0 .. num_blocks - 1
        # scratch_block: one more block, owned by no sequence, where padded rows of a
        # CUDA-graph decode batch write their K/V
        self.scratch_block: int | None = num_blocks if scratch_block else None
        shape = (num_blocks + int(scratch_block), spec.block_size, spec.num_kv_heads, spec.head_dim)
        self.k = [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
        self.v = [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]

    def gather(self, block_ids: list[int]) -> torch.Tensor:  # [n, L, 2, B, Hkv, D]
        idx = torch.tensor(block_ids, dtype=torch.long, device=self.k[0].device)
        per_layer = [torch.stack((k[idx], v[idx]), dim=1) for k, v in zip(self.k, self.v)]  # L x [n, 2, B, Hkv, D]
        return torch.stack(per_layer, dim=1)

    def scatter(self, block_ids: list[int], rows: torch.Tensor) -> None:
        """Write transfer rows [n, L, 2, B, Hkv, D] into the given blocks."""
        expected = (len(block_ids), self.spec.num_layers, 2, self.spec.block_size, self.spec.num_kv_heads, self.spec.head_dim)
        if tuple(rows.shape) != expected:
            raise ValueError(
                f"KV rows have shape {tuple(rows.shape)}, expected {expected}; "
                "export and import engines must share model, block size and TP layout"
            )
        device = self.k[0].device
        idx = torch.tensor(block_ids, dtype=torch.long, device=device)
        rows = rows.to(device=device, dtype=self.spec.dtype)
        for layer, (k, v) in enumerate(zip(self.k, self.v)):
            k.index_copy_(0, idx, rows[:, layer, 0])
            v.index_copy_(0, idx, rows[:, layer, 1])


def num_blocks_for_budget(spec: KVCacheSpec, budget_bytes: int) -> int:
    return max(0, budget_bytes // spec.bytes_per_block)


def gpu_kv_budget(device: torch.device, utilization: float) -> int:
    """Bytes for KV: this engine may use ``utilization`` of the card in all (weights, the warm-up
    peak and KV), and never more than is free now, so engines sharing a GPU each get their share."""
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device)
    headroom = 512 << 20  # CUDA context, graphs and allocator slack outside PyTorch's accounting
    return max(0, min(int(total * utilization) - peak, free - headroom))
