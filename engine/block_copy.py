"""Copy KV blocks between two pools of one layout: ``dst[:, :, dst_ids[i]] = src[:, :, src_ids[i]]``.

Pools are [L, 2, N, B, Hkv, D] (engine/kv_cache.py); ``src`` may be another process's pool
mapped into this one (CUDA IPC or a shared-memory file). On CUDA one Triton launch copies
every block of every layer (no staging, no per-block launches); on CPU runs of consecutive
ids become slice copies.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

COPY_CHUNK = 4096  # elements per load/store step: 8 KiB of bf16
COPY_WARPS = 4
# Two launch layouts. ORDER 0, the default: grid (pairs, layer halves, chunks), one CHUNK per
# program. ORDER 1: slab-major, program i copies slab i (one layer half of one block, B * Hkv * D
# contiguous elements, 32 KiB for Llama-8B) in CHUNK steps. On the H200 both, and four
# chunk/warp settings, were within 3% of each other from 4k tokens up (docs/performance.md).
COPY_ORDER = 0
COPY_SORTED = False  # launch the pairs in ascending source id order (a variant: --variants 4096x4x0xs)
GRAPH_MAX_PAIRS = 16384  # copies of more blocks launch directly (their host cost is small beside the copy)
GRAPH_CACHE = 32  # captured copies kept (per pool pair and size class), least recently used dropped


def copy_blocks(src: torch.Tensor, src_ids: list[int], dst: torch.Tensor, dst_ids: list[int]) -> None:
    if len(src_ids) != len(dst_ids):
        raise ValueError(f"{len(src_ids)} source blocks but {len(dst_ids)} destination blocks")
    if not src_ids:
        return
    if dst.device.type == "cuda" and _have_triton():
        _copy_triton(src, src_ids, dst, dst_ids)
    else:
        for s, d, n in consecutive_runs(src_ids, dst_ids):
            dst[:, :, d : d + n].copy_(src[:, :, s : s + n])


@functools.cache
def _have_triton() -> bool:
    """Looked up once: ``find_spec`` searches sys.path, ~20-80 us, more than a 32 MiB copy takes on an H200."""
    return importlib.util.find_spec("triton") is not None


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
    sort: bool = COPY_SORTED,
) -> None:
    n = len(src_ids)
    if dst.device.type == "cuda" and not sort and (chunk, warps, order) == (COPY_CHUNK, COPY_WARPS, COPY_ORDER):
        graph = _graph_for(src, dst, n)
        if graph is not None:
            graph.run(src_ids, dst_ids)
            return
    _launch(src, dst, _staged_ids(src_ids, dst_ids, dst.device, sort), n, chunk, warps, order)


def graphs_enabled() -> bool:
    return os.environ.get("SPLITSERVE_COPY_GRAPHS", "1") != "0"


class _CopyGraph:
    """The copy of up to ``capacity`` block pairs between two fixed pools, captured in CUDA graphs.

    One replay uploads the ids (a memcpy node out of a pinned buffer, the pair count first) and
    runs the copy kernel: ~20 us of host time on the H200 host, nearly all of it the driver's
    graph launch, where staging the ids and launching the Triton kernel from Python took
    50-100 us, more than moving 32 MiB (bench/kv_transfer_bench.py --breakdown). ``RING``
    captures, each with its own buffers, take turns, so a copy never waits for the one before
    it; a pinned buffer is rewritten only after the replay that last read it has finished.
    """

    RING = 4

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, capacity: int) -> None:
        self.capacity, self.turn = capacity, 0
        self.lock = threading.Lock()  # two threads copying between the same pools take turns
        # (graph, a numpy view of its pinned id buffer, its end event, its device id buffer): the
        # graph writes the ids into that device buffer at every replay, so the slot keeps it alive
        self.slots: list[tuple[torch.cuda.CUDAGraph, np.ndarray, torch.cuda.Event, torch.Tensor]] = []
        for _ in range(self.RING):
            host = torch.zeros(1 + 2 * capacity, dtype=torch.int64, pin_memory=True)
            dev = torch.zeros(1 + 2 * capacity, dtype=torch.int64, device=dst.device)
            count, ids = dev[:1], dev[1:].view(2, capacity)
            _launch(src, dst, ids, capacity, COPY_CHUNK, COPY_WARPS, COPY_ORDER, count)  # compiles; count 0 copies nothing
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA calls (a step, a store read) do not break the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                dev.copy_(host, non_blocking=True)
                _launch(src, dst, ids, capacity, COPY_CHUNK, COPY_WARPS, COPY_ORDER, count)
            done = torch.cuda.Event()
            done.record()
            # a numpy view of the pinned buffer (cheap writes); it keeps the buffer alive
            self.slots.append((graph, host.numpy(), done, dev))

    def run(self, src_ids: list[int], dst_ids: list[int]) -> None:
        n, cap = len(src_ids), self.capacity
        with self.lock:
            graph, view, done, _ = self.slots[self.turn]
            self.turn = (self.turn + 1) % self.RING
            done.synchronize()  # the last replay of this slot has read its pinned buffer
            view[0] = n
            view[1 : 1 + n] = src_ids
            view[1 + cap : 1 + cap + n] = dst_ids
            graph.replay()
            done.record()


_graphs: OrderedDict[tuple, _CopyGraph | None] = OrderedDict()
_graphs_lock = threading.Lock()


def _graph_for(src: torch.Tensor, dst: torch.Tensor, n: int) -> _CopyGraph | None:
    """The captured copy for these pools and ``n`` pairs (capacity: the next power of two), or None."""
    if n > GRAPH_MAX_PAIRS or not graphs_enabled():
        return None
    capacity = max(16, 1 << (n - 1).bit_length())
    key = (src.data_ptr(), tuple(src.shape), dst.data_ptr(), tuple(dst.shape), dst.device, capacity)
    with _graphs_lock:
        if key in _graphs:
            _graphs.move_to_end(key)
            return _graphs[key]
        try:
            graph: _CopyGraph | None = _CopyGraph(src, dst, capacity)
        except RuntimeError:  # a capture the driver refused: this pool pair launches directly
            graph = None
        _graphs[key] = graph
        while len(_graphs) > GRAPH_CACHE:
            _graphs.popitem(last=False)
        return graph


def _launch(
    src: torch.Tensor,
    dst: torch.Tensor,
    ids: torch.Tensor,
    n: int,
    chunk: int,
    warps: int,
    order: int,
    count: torch.Tensor | None = None,
) -> None:
    """One kernel for ``n`` (src, dst) block pairs; ``ids`` [2, n] int64 on the device.

    ``count``: a one-element device tensor; only its first ``count[0]`` pairs are copied
    (a launch captured in a CUDA graph for up to ``n`` pairs).
    """
    lk = src.shape[0] * src.shape[1]
    elems = src[0, 0, 0].numel()  # B * Hkv * D per block and layer half
    grid = (n, lk, -(-elems // chunk)) if order == 0 else (n * lk,)
    _kernel()[grid](
        src,
        dst,
        ids,
        ids if count is None else count,
        n,
        lk,
        src.shape[2] * elems,
        dst.shape[2] * elems,
        elems,
        CHUNK=chunk,
        ORDER=order,
        DEVICE_COUNT=count is not None,
        EVEN=elems % chunk == 0,
        num_warps=warps,
    )


class _IdStaging:
    """A pinned host buffer and a device buffer for the id lists, reused by every copy on one stream.

    A fresh ``torch.tensor(..., pin_memory=True)`` per copy cost more host time than moving 32 MiB
    of KV on the H200 (bench/kv_transfer_bench.py --breakdown). The host buffer is rewritten only
    after the previous upload out of it has finished (an event); the device buffer is reused in
    stream order, so the kernel that read it is done before the next upload lands.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.capacity = device, 0
        self.host = self.dev = torch.empty(0, dtype=torch.int64)
        self.uploaded: torch.cuda.Event | None = None

    def stage(self, src_ids: list[int], dst_ids: list[int], sort: bool) -> torch.Tensor:
        n = len(src_ids)
        if self.uploaded is not None:
            self.uploaded.synchronize()  # the last upload out of the host buffer has been read
        if 2 * n > self.capacity:
            self.capacity = max(2 * n, 2 * self.capacity, 1024)
            self.host = torch.empty(self.capacity, dtype=torch.int64, pin_memory=True)
            self.dev = torch.empty(self.capacity, dtype=torch.int64, device=self.device)
        view = self.host.numpy()
        view[:n], view[n : 2 * n] = src_ids, dst_ids
        if sort:  # ascending source ids: neighbouring programs read neighbouring slabs of the peer pool
            order = np.argsort(view[:n], kind="stable")
            view[:n], view[n : 2 * n] = view[:n][order], view[n : 2 * n][order]
        dev = self.dev[: 2 * n]
        dev.copy_(self.host[: 2 * n], non_blocking=True)
        self.uploaded = torch.cuda.Event()
        self.uploaded.record(torch.cuda.current_stream(self.device))
        return dev.view(2, n)


_staging: dict[tuple[torch.device, int], _IdStaging] = {}
_staging_lock = threading.Lock()


def _staged_ids(src_ids: list[int], dst_ids: list[int], device: torch.device, sort: bool = False) -> torch.Tensor:
    """The id lists as a [2, n] int64 tensor on ``device``."""
    if device.type != "cuda":  # the Triton interpreter (CPU tests) reads host memory
        ids = np.array([src_ids, dst_ids], dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(ids[:, np.argsort(ids[0], kind="stable")]) if sort else ids)
    key = (device, torch.cuda.current_stream(device).cuda_stream)
    with _staging_lock:  # two threads on one stream take turns with its buffers
        staging = _staging.get(key)
        if staging is None:
            staging = _staging[key] = _IdStaging(device)
        return staging.stage(src_ids, dst_ids, sort)


@functools.cache
def _kernel() -> Any:  # a triton JITFunction (triton is untyped), launched as _kernel()[grid](...)
    """Built on first use: importing triton at engine import would fix TRITON_INTERPRET too early."""
    import triton
    import triton.language as tl

    @triton.jit
    def copy_blocks_kernel(
        src,
        dst,
        ids,
        count,
        n,
        lk_total,
        src_lk_stride,
        dst_lk_stride,
        elems,
        CHUNK: tl.constexpr,
        ORDER: tl.constexpr,
        DEVICE_COUNT: tl.constexpr,
        EVEN: tl.constexpr,
    ):
        # ids: [2, n] (source ids, then destination ids); with DEVICE_COUNT only the first
        # count[0] pairs are live (a captured launch sized for up to n pairs)
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
        live = True  # a captured launch sized for more pairs copies only the first count[0]
        if DEVICE_COUNT:
            live = pair < tl.load(count)
        if live:
            s = tl.load(ids + pair)
            d = tl.load(ids + n + pair)
            src_base = src + lk * src_lk_stride + s * elems
            dst_base = dst + lk * dst_lk_stride + d * elems
            for start in range(first, last, CHUNK):
                offs = start + tl.arange(0, CHUNK)
                if EVEN:  # whole chunks: no mask, so every load and store is a full vector
                    tl.store(dst_base + offs, tl.load(src_base + offs))
                else:
                    mask = offs < elems
                    tl.store(dst_base + offs, tl.load(src_base + offs, mask=mask), mask=mask)

    return copy_blocks_kernel
