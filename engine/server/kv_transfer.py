"""KV transfer between engine blocks and the KV store, off the core's step loop.

A store object is one block for all layers of one TP shard: a row
[num_layers, 2, block_size, num_kv_heads, head_dim] (engine/kv_cache.py), named with
kvstore.block_key.store_key(layout, key). Reads land in one preallocated tensor
[n, L, 2, B, Hkv, D] (get_blocks_into, no extra copy); writes send rows the engine
gathered. Both run on a small thread pool so transfer overlaps the engine's compute.

The partial last block of a prompt is stored under its ``tail_key``:
chain_key(parent, tail_token_ids) with parent = the key of the last full block (or
the root key for prompts shorter than one block). The key names the content (same
prefix, same tail tokens -> same key) and cannot equal a full block's key, whose
hashed data is block_size tokens long.

A prefill worker answers at its first token, while the request's last blocks may still
be on their way to the store (KVHandle.blocks_pending). The decode side then reads with
a ``PendingFetch``: each attempt reads the blocks that are committed by now and leaves
the rest for a later attempt (the engine core schedules the attempts, so no transfer
thread sits waiting), until every block is read or the wait deadline passes ->
BlocksMissing. The store cannot tell "being written" from "never will be" for a block
whose put has not started yet, so the deadline is what bounds a failed or dead writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from engine.kv_cache import KVCacheSpec
from kvstore.block_key import BlockKey, KVLayout, chain_key, root_key
from kvstore.client import PutStatus
from kvstore.sync_client import KVStoreClient

TransferObserver = Callable[[str, int, float], None]  # (direction "in" | "out", bytes, seconds)


class BlocksMissing(LookupError):
    """The store no longer holds a block the request needs (evicted or never written)."""


class StorePutFailed(RuntimeError):
    """The store refused or failed a block write."""


def tail_key(parent: BlockKey | None, model_fingerprint: str, cache_salt: str, tail_tokens: list[int]) -> BlockKey:
    """Content key of a prompt's partial last block (see module docstring)."""
    return chain_key(parent if parent is not None else root_key(model_fingerprint, cache_salt), tail_tokens)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(slots=True)
class KVTransfer:
    address: str  # kvstore master host:port
    client: KVStoreClient
    layout: KVLayout
    spec: KVCacheSpec
    observe: TransferObserver
    pool: ThreadPoolExecutor
    _stream: torch.cuda.Stream | None = None  # side stream for device->host staging (CUDA only)

    @classmethod
    def connect(cls, address: str, layout: KVLayout, spec: KVCacheSpec, observe: TransferObserver) -> KVTransfer:
        return cls(address, KVStoreClient(address), layout, spec, observe, ThreadPoolExecutor(4, thread_name_prefix="kv-transfer"))

    def empty_rows(self, n: int) -> torch.Tensor:  # [n, L, 2, B, Hkv, D]
        """Host rows for reads; pinned on a GPU host so the import's host->device copy runs at full speed."""
        s = self.spec
        shape = (n, s.num_layers, 2, s.block_size, s.num_kv_heads, s.head_dim)
        return torch.empty(shape, dtype=s.dtype, pin_memory=torch.cuda.is_available() and n > 0)

    def stage(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Start moving exported rows to host memory without stalling the engine's stream.

        On CUDA the copy goes to a pinned buffer on a side stream that waits only for the
        export itself, not for the steps the engine queues after it; the returned event
        marks when the host rows are valid. Call on the engine thread, right after export.
        """
        if rows.device.type != "cuda":
            return rows, None
        if self._stream is None:
            self._stream = torch.cuda.Stream(rows.device)
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        self._stream.wait_stream(torch.cuda.current_stream(rows.device))
        with torch.cuda.stream(self._stream):
            host.copy_(rows, non_blocking=True)
            rows.record_stream(self._stream)  # the export buffer must outlive the copy
            ready = torch.cuda.Event()
            ready.record(self._stream)
        return host, ready

    # ---- reads ----------------------------------------------------------------------------------
    def leading_hits(self, keys: list[BlockKey]) -> int:
        """How many of ``keys``, from the first, the store holds now (no lease taken)."""
        if not keys:
            return 0
        found = self.client.blocks_exist(self.layout, keys)
        return next((i for i, ok in enumerate(found) if not ok), len(found))

    def fetch(self, keys: list[BlockKey]) -> torch.Tensor:
        """All ``keys`` as rows [n, L, 2, B, Hkv, D]; raises BlocksMissing on any miss."""
        rows = self.empty_rows(len(keys))
        if not keys:
            return rows
        start = time.perf_counter()
        found = self.client.get_blocks_into(self.layout, keys, [rows[i] for i in range(len(keys))])
        if not all(found):
            missing = sum(1 for ok in found if not ok)
            raise BlocksMissing(f"{missing} of {len(keys)} KV blocks are not in the store (evicted or never written)")
        self.observe("in", rows.numel() * rows.element_size(), time.perf_counter() - start)
        return rows

    def fetch_prefix(self, keys: list[BlockKey]) -> torch.Tensor:
        """The longest leading run of ``keys`` the store can deliver now, as rows."""
        n = self.leading_hits(keys)
        try:
            return self.fetch(keys[:n])
        except BlocksMissing:
            return self.empty_rows(0)  # evicted between the check and the read: recompute instead

    def pending_fetch(self, keys: list[BlockKey], wait_s: float) -> PendingFetch:
        """A read of ``keys`` that waits up to ``wait_s`` for blocks not committed yet (see module doc)."""
        return PendingFetch(self, keys, time.monotonic() + wait_s, wait_s)

    # ---- writes ---------------------------------------------------------------------------------
    def put(self, keys: list[BlockKey], rows: torch.Tensor, ready: torch.cuda.Event | None = None) -> None:
        """Store rows [n, L, 2, B, Hkv, D] under ``keys`` (host rows from ``stage``); raises StorePutFailed."""
        start = time.perf_counter()
        if ready is not None:
            ready.synchronize()  # on this transfer thread: the engine keeps stepping meanwhile
        rows = rows.to("cpu").contiguous()
        results = self.client.put_blocks(self.layout, {k: rows[i] for i, k in enumerate(keys)})
        failed = [r.error for r in results.values() if not r.ok]
        if failed:
            raise StorePutFailed(f"{len(failed)} of {len(keys)} KV block writes failed: {failed[0]}")
        in_flight = [k for k, r in results.items() if r.status is PutStatus.IN_FLIGHT]
        self._await_commit(in_flight)
        self.observe("out", rows.numel() * rows.element_size(), time.perf_counter() - start)

    def _await_commit(self, keys: list[BlockKey], timeout_s: float = 5.0) -> None:
        """Another writer is putting the same content: wait until it is readable."""
        deadline = time.monotonic() + timeout_s
        while keys:
            found = self.client.blocks_exist(self.layout, keys)
            keys = [k for k, ok in zip(keys, found) if not ok]
            if keys and time.monotonic() > deadline:
                raise StorePutFailed(f"{len(keys)} KV blocks written concurrently by another worker never committed")
            if keys:
                time.sleep(0.01)

    def submit(self, fn: Callable[..., object], *args: object) -> Future:
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


class PendingFetch:
    """Rows [n, L, 2, B, Hkv, D] of ``keys``, filled over several ``attempt`` calls as blocks commit."""

    FIRST_DELAY_S = 0.001
    MAX_DELAY_S = 0.005  # an existence check is one small master RPC: poll often, the wait is on the TTFT path

    def __init__(self, transfer: KVTransfer, keys: list[BlockKey], deadline: float, wait_s: float) -> None:
        self.transfer, self.keys, self.deadline, self.wait_s = transfer, keys, deadline, wait_s
        self.rows: torch.Tensor | None = None  # allocated by the first attempt, on a transfer thread
        self.todo = list(range(len(keys)))  # indexes not read yet
        self.delay = self.FIRST_DELAY_S
        self.attempts = 0
        self._busy_s = 0.0  # time spent reading (not waiting), for the transfer metric

    def attempt(self) -> bool:
        """Read what is readable now (one transfer thread call); True when every block is in ``rows``.

        The first attempt reads straight away (the common case: all committed, one read as
        in ``fetch``); later ones first ask which of the rest exist (no lease taken) and read
        only those. Raises BlocksMissing once the deadline passes with blocks still absent.
        """
        t, self.attempts = self.transfer, self.attempts + 1
        start = time.perf_counter()
        if self.rows is None:
            self.rows = t.empty_rows(len(self.keys))
        todo = self.todo
        if self.attempts > 1 and todo:
            found = t.client.blocks_exist(t.layout, [self.keys[i] for i in todo])
            todo = [i for i, ok in zip(todo, found) if ok]
        if todo:
            got = t.client.get_blocks_into(t.layout, [self.keys[i] for i in todo], [self.rows[i] for i in todo])
            if self.attempts > 1 and not all(got):
                raise BlocksMissing("a KV block was evicted between its existence check and its read")
            read = {i for i, ok in zip(todo, got) if ok}
            self.todo = [i for i in self.todo if i not in read]
        self._busy_s += time.perf_counter() - start
        if not self.todo:
            t.observe("in", self.rows.numel() * self.rows.element_size(), self._busy_s)
            return True
        if self.wait_s <= 0:
            raise BlocksMissing(f"{len(self.todo)} of {len(self.keys)} KV blocks are not in the store (evicted or never written)")
        if time.monotonic() >= self.deadline:
            raise BlocksMissing(
                f"{len(self.todo)} of {len(self.keys)} KV blocks did not reach the store within {self.wait_s:g} s "
                "(the prefill worker's write failed or stalled, or the blocks were evicted)"
            )
        return False

    def next_delay(self) -> float:
        """Seconds until the next attempt (backs off from 1 ms to 5 ms)."""
        d, self.delay = self.delay, min(self.delay * 1.5, self.MAX_DELAY_S)
        return d
