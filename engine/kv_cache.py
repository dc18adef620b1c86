"""The paged KV pool: per-layer K and V tensors sized from a memory budget, and block copies.

The whole pool is one allocation, ``pool`` [num_layers, 2 (K, V), num_blocks, block_size,
num_kv_heads, head_dim], so that another process can map it with one handle (CUDA IPC, or a
shared-memory file on CPU) and copy blocks out of it directly (kv_transfer/peer_pool.py).
Per layer the attention sees views: k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim].
A transfer row (one store object) is one block for all layers:
    [num_layers, 2, block_size, num_kv_heads, head_dim]  (2 = K, V)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.block_copy import copy_blocks


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
    def __init__(
        self,
        spec: KVCacheSpec,
        num_blocks: int,
        device: torch.device,
        scratch_block: bool = False,
        shared_file: str | None = None,
    ) -> None:
        """``shared_file`` (CPU only): back the pool with that file (e.g. under /dev/shm) so that a
        worker on the same host can map it; on CUDA any pool can be shared through CUDA IPC."""
        self.spec = spec
        self.num_blocks = num_blocks  # blocks the block manager hands out: 0 .. num_blocks - 1
        # scratch_block: one more block, owned by no sequence, where padded rows of a
        # CUDA-graph decode batch write their K/V
        self.scratch_block: int | None = num_blocks if scratch_block else None
        self.shared_file = shared_file
        shape = (spec.num_layers, 2, num_blocks + int(scratch_block), spec.block_size, spec.num_kv_heads, spec.head_dim)
        if shared_file is not None:
            if device.type != "cpu":
                raise ValueError("a file-backed KV pool is for CPU engines; CUDA pools are shared through CUDA IPC")
            numel = 1
            for d in shape:
                numel *= d
            self.pool = torch.from_file(shared_file, shared=True, size=numel, dtype=spec.dtype).view(shape)  # zeroed file
        else:
            self.pool = torch.zeros(shape, dtype=spec.dtype, device=device)
        self.k = [self.pool[layer, 0] for layer in range(spec.num_layers)]  # views [N, B, Hkv, D]
        self.v = [self.pool[layer, 1] for layer in range(spec.num_layers)]

    def gather(self, block_ids: list[int]) -> torch.Tensor:  # [n, L, 2, B, Hkv, D]
        idx = torch.tensor(block_ids, dtype=torch.long, device=self.pool.device)
        return self.pool.index_select(2, idx).permute(2, 0, 1, 3, 4, 5).contiguous()  # [L, 2, n, ...] -> [n, L, 2, ...]

    def scatter(self, block_ids: list[int], rows: torch.Tensor) -> None:
        """Write transfer rows [n, L, 2, B, Hkv, D] into the given blocks."""
        expected = (len(block_ids), self.spec.num_layers, 2, self.spec.block_size, self.spec.num_kv_heads, self.spec.head_dim)
        if tuple(rows.shape) != expected:
            raise ValueError(
                f"KV rows have shape {tuple(rows.shape)}, expected {expected}; "
                "export and import engines must share model, block size and TP layout"
            )
        device = self.pool.device
        idx = torch.tensor(block_ids, dtype=torch.long, device=device)
        rows = rows.to(device=device, dtype=self.spec.dtype)
        self.pool.index_copy_(2, idx, rows.permute(1, 2, 0, 3, 4, 5))  # [n, L, 2, ...] -> [L, 2, n, ...]

    def copy_blocks_from(self, src_pool: torch.Tensor, src_ids: list[int], dst_ids: list[int]) -> None:
        """Copy blocks of another engine's pool (same layout, mapped into this process) into ours."""
        if (
            src_pool.shape[:2] != self.pool.shape[:2]
            or src_pool.shape[3:] != self.pool.shape[3:]
            or src_pool.dtype != self.pool.dtype
        ):
            raise ValueError(
                f"peer KV pool {tuple(src_pool.shape)} {src_pool.dtype} does not match this engine's "
                f"{tuple(self.pool.shape)} {self.pool.dtype}"
            )
        copy_blocks(src_pool, src_ids, self.pool, dst_ids)


def num_blocks_for_budget(spec: KVCacheSpec, budget_bytes: int) -> int:
    return max(0, budget_bytes // spec.bytes_per_block)


def gpu_kv_budget(device: torch.device, utilization: float) -> int:
    """Bytes for KV: this engine may use ``utilization`` of the card in all (weights, the warm-up
    peak and KV), and never more than is free now, so engines sharing a GPU each get their share."""
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device)
    headroom = 512 << 20  # CUDA context, graphs and allocator slack outside PyTorch's accounting
    return max(0, min(int(total * utilization) - peak, free - headroom))
