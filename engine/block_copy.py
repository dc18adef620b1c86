"""Copy KV blocks between two pools of one layout: ``dst[:, :, dst_ids[i]] = src[:, :, src_ids[i]]``.

Pools are [L, 2, N, B, Hkv, D] (engine/kv_cache.py); ``src`` may be another process's pool
mapped into this one (CUDA IPC or a shared-memory file). On CUDA one Triton launch copies
every block of every layer (no staging, no per-block launches); on CPU runs of consecutive
ids become slice copies.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch

COPY_CHUNK = 4096  # elements per load/store step: 8 KiB of bf16
COPY_WARPS = 4
# Two launch layouts. ORDER 0, the default (measured on the H200, docs/performance.md): grid
# (pairs, layer halves, chunks), one CHUNK per program. ORDER 1: slab-major, program i copies
# slab i (one layer half of one block, B * Hkv * D contiguous elements, 32 KiB for Llama-8B)
# in CHUNK steps, so neighbouring programs read neighbouring memory; not yet timed on a GPU
# (bench/kv_transfer_bench.py --variants 4096x4x1), it becomes the default only if it is faster.
COPY_ORDER = 0


def copy_blocks(src: torch.Tensor, src_ids: list[int], dst: torch.Tensor, dst_ids: list[int]) -> None:
    if len(src_ids) != len(dst_ids):
        raise ValueError(f"{len(src_ids)} source blocks but {len(dst_ids)} destination blocks")
    if not src_ids:
        return
    if dst.device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        _copy_triton(src, src_ids, dst, dst_ids)
    else:
        for s, d, n in consecutive_runs(src_ids, dst_ids):
            dst[:, :, d : d + n].copy_(src[:, :, s : s + n])


def consecutive_runs(src_ids: list[int], dst_ids: list[int]) -> list[tuple[int, int, int]]:
    """(src_start, dst_start, length) runs where both id lists step by one."""
    runs: list[tuple[int, int, int]] = []
    for s, d in zip(src_ids, dst_ids):
        if runs and runs[-1][0] + runs[-1][2] == s and runs[-1][1] + runs[-1][2] == d:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((s, d, 1))
    return runs


def _copy_triton(
    src: torch.Tensor,
    src_ids: list[int],
    dst: torch.Tensor,
    dst_ids: list[int],
    chunk: int = COPY_CHUNK,
    warps: int = COPY_WARPS,
    order: int = COPY_ORDER,
) -> None:
    lk = src.shape[0] * src.shape[1]
    elems = src[0, 0, 0].numel()  # B * Hkv * D per block and layer half
    on_gpu = dst.device.type == "cuda"
    ids = torch.tensor([src_ids, dst_ids], dtype=torch.int64, pin_memory=on_gpu).to(dst.device, non_blocking=on_gpu)  # [2, n]
    n = len(src_ids)
    if order == 0:
        grid = (n, lk, -(-elems // chunk))
    else:
        grid = (n * lk,)
    _kernel()[grid](
        src, dst, ids, n, lk, src.shape[2] * elems, dst.shape[2] * elems, elems, CHUNK=chunk, ORDER=order, num_warps=warps
    )


@functools.cache
def _kernel() -> Callable:
    """Built on first use: importing triton at engine import would fix TRITON_INTERPRET too early."""
    import triton
    import triton.language as tl

    @triton.jit
    def copy_blocks_kernel(
        src, dst, ids, n, lk_total, src_lk_stride, dst_lk_stride, elems, CHUNK: tl.constexpr, ORDER: tl.constexpr
    ):
        if ORDER == 0:
            pair = tl.program_id(0)
            lk = tl.program_id(1).to(tl.int64)
            first = tl.program_id(2) * CHUNK
            last = first + CHUNK
        else:
            # slab-major: program i is (pair i // lk_total, layer half i % lk_total), whole slab
            slab = tl.program_id(0)
            pair = slab // lk_total
            lk = (slab % lk_total).to(tl.int64)
            first = 0
            last = elems
        s = tl.load(ids + pair)
        d = tl.load(ids + n + pair)
        src_base = src + lk * src_lk_stride + s * elems
        dst_base = dst + lk * dst_lk_stride + d * elems
        for start in range(first, last, CHUNK):
            offs = start + tl.arange(0, CHUNK)
            mask = offs < elems
            vals = tl.load(src_base + offs, mask=mask)
            tl.store(dst_base + offs, vals, mask=mask)

    return copy_blocks_kernel
