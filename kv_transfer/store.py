"""Store transport: KV blocks through the KV store, off the core's step loop.

A store object is one block for all layers of one TP shard: a row
[num_layers, 2, block_size, num_kv_heads, head_dim] (engine/kv_cache.py), named with
kvstore.block_key.store_key(layout, key). Reads land in one preallocated tensor
[n, L, 2, B, Hkv, D] (get_blocks_into, no extra copy); writes send rows the engine
gathered. Both run on a small thread pool so transfer overlaps the engine's compute.

Sender: after every prefill chunk the newly final blocks are staged to pinned host memory on
a side CUDA stream and written on the pool; the partial last block goes under a ``tail_key``
(chain_key(parent, tail tokens), parent = the last full block's key or the root key: it names
the content and cannot equal a full block's key). The prefill worker answers at its first
token, while the last writes may still be in flight (KVHandle.blocks_pending). Writes are the
cache tier too: with ``write_budget`` set (beside the direct transport) they are best effort,
skipped while more bytes than that are in flight, and the handle then names no store.

Receiver: a ``PendingFetch`` reads the blocks that are committed by now and leaves the rest
for a later attempt until every block is read or the wait deadline passes -> BlocksMissing.
With our store the master tells when the rest commit (``notice``: a future on the store
client's event loop, and the import schedules the next attempt when it completes), so no
thread sits waiting and nothing polls; with Mooncake, which announces no commits, the engine
core schedules attempts that poll, backing off from 1 ms to 5 ms. The store cannot tell
"being written" from "never will be" for a block whose put has not started, so the deadline
is what bounds a failed or dead writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from contracts.kv_handle import KVHandle
from engine.kv_cache import KVCacheSpec
from engine.kv_source import KVRows
from kv_transfer.connector import ExportJob
from kvstore.backend import StoreBackend, open_store
from kvstore.block_key import BlockKey, KVLayout, chain_key, root_key
from kvstore.client import PutStatus
from kvstore.event_publisher import KVEventPublisher
from kvstore.mooncake_url import is_mooncake_url
from kvstore.store_tier_events import AnnouncingStore

TransferObserver = Callable[[str, int, float], None]  # (direction "in" | "out", bytes, seconds)
ExportRows = Callable[[str, int, int], torch.Tensor]  # (request id, first block, end block) -> rows


class BlocksMissing(LookupError):
    """The store no longer holds a block the request needs (evicted or never written)."""


class StorePutFailed(RuntimeError):
    """The store refused or failed a block write."""


def tail_key(parent: BlockKey | None, model_fingerprint: str, cache_salt: str, tail_tokens: list[int]) -> BlockKey:
    """Content key of a prompt's partial last block (see module docstring)."""
    return chain_key(parent if parent is not None else root_key(model_fingerprint, cache_salt), tail_tokens)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _reader_only(request_id: str, first: int, end: int) -> torch.Tensor:
    raise RuntimeError("a StoreConnector without export_rows only reads: it cannot save blocks")


class StoreConnector:
    name = "store"

    def __init__(
        self,
        address: str,
        layout: KVLayout,
        spec: KVCacheSpec,
        observe: TransferObserver,
        export_rows: ExportRows | None = None,
        write_budget: int | None = None,
        announce_on: KVEventPublisher | None = None,
    ) -> None:
        self.address, self.layout, self.spec, self.observe = address, layout, spec, observe
        self.client: StoreBackend = open_store(address)  # our store (HOST:PORT) or mooncake://...
        self.announcer: AnnouncingStore | None = None
        if announce_on is not None and is_mooncake_url(address):
            # Mooncake publishes no KV events: this writer announces its blocks (medium "store")
            # on the worker's own event stream, and the router files them under the store tier
            self.client = self.announcer = AnnouncingStore(self.client, publisher=announce_on)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="kv-store")
        self.export_rows = export_rows or _reader_only
        self.write_budget = write_budget  # None: every block is written (the store is the handoff path)
        self._stream: torch.cuda.Stream | None = None  # side stream for device->host staging (CUDA only)
        self._in_flight_bytes = 0

    # ---- sender ---------------------------------------------------------------------------------
    def save(self, job: ExportJob, blocks: list[int]) -> None:
        if self.write_budget == 0:
            job.store_incomplete = True
            return
        todo = [i for i in blocks if i not in job.in_store]
        if todo:
            rows = self.export_rows(job.request_id, todo[0], todo[-1] + 1)  # [n, L, 2, B, Hkv, D]
            self._write(job, [job.keys[i] for i in todo], rows[[i - todo[0] for i in todo]])

    def finish(self, job: ExportJob) -> None:
        if job.tail and self.write_budget != 0:
            full = len(job.keys)
            self._write(job, [job.tail], self.export_rows(job.request_id, full, full + 1))

    def _write(self, job: ExportJob, keys: list[BlockKey], rows: torch.Tensor) -> None:
        nbytes = rows.numel() * rows.element_size()
        if self.write_budget is not None and self._in_flight_bytes + nbytes > self.write_budget:
            job.store_incomplete = True
            return
        self._in_flight_bytes += nbytes
        host, ready = self.stage(rows)
        fut = self.pool.submit(self.put, keys, host, ready)
        fut.add_done_callback(lambda _f: self._written(nbytes))
        job.puts.append(fut)

    def _written(self, nbytes: int) -> None:
        self._in_flight_bytes -= nbytes  # a single int update under the GIL; read approximately on the core thread

    def offer(self, job: ExportJob, handle: KVHandle) -> None:
        if job.store_incomplete or self.failed(job):
            return  # the store will not hold every block: do not send a reader there
        handle.store_addresses = [self.address]
        handle.blocks_pending = not all(f.done() for f in job.puts)

    @staticmethod
    def failed(job: ExportJob) -> list[BaseException]:
        return [e for f in job.puts if f.done() and not f.cancelled() and (e := f.exception()) is not None]

    def holds(self, job: ExportJob) -> bool:
        """Until its writes end the engine keeps the blocks (kept simple: the writes read staged copies)."""
        return not all(f.done() for f in job.puts)

    @staticmethod
    def on_written(job: ExportJob, wake: Callable[[], None]) -> None:
        for fut in job.puts:
            fut.add_done_callback(lambda _f: wake())

    @staticmethod
    def drain(jobs: list[ExportJob], timeout_s: float) -> None:
        """Shutdown: let answered requests' writes finish (bounded), so their readers find the blocks."""
        deadline = time.monotonic() + timeout_s
        for job in jobs:
            for fut in job.puts:
                try:
                    fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:  # a failed or unfinished put: the reader times out
                    pass

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
        self._await_commit([k for k, r in results.items() if r.status is PutStatus.IN_FLIGHT])
        self.observe("out", rows.numel() * rows.element_size(), time.perf_counter() - start)

    def _await_commit(self, keys: list[BlockKey], timeout_s: float = 5.0) -> None:
        """Another writer is putting the same content: wait until it is readable (told at the commit)."""
        if keys and not all(self.client.wait_for_blocks(self.layout, keys, timeout_s)):
            raise StorePutFailed(f"{len(keys)} KV blocks written concurrently by another worker never committed")

    # ---- receiver -------------------------------------------------------------------------------
    def accepts(self, handle: KVHandle) -> bool:
        return bool(handle.store_addresses)

    def load(self, handle: KVHandle, first_block: int, wait_s: float) -> PendingFetch:
        """Blocks ``first_block``.. of the handle (tail included), waiting for uncommitted ones if pending."""
        return PendingFetch(self, handle.all_keys()[first_block:], wait_s if handle.blocks_pending else 0.0)

    def empty_rows(self, n: int) -> torch.Tensor:  # [n, L, 2, B, Hkv, D]
        """Host rows for reads; pinned on a GPU host so the import's host->device copy runs at full speed."""
        s = self.spec
        shape = (n, s.num_layers, 2, s.block_size, s.num_kv_heads, s.head_dim)
        return torch.empty(shape, dtype=s.dtype, pin_memory=torch.cuda.is_available() and n > 0)

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

    def submit(self, fn: Callable[..., object], *args: object) -> Future:
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


class PendingFetch:
    """Rows [n, L, 2, B, Hkv, D] of ``keys``, filled over several ``attempt`` calls as blocks commit."""

    FIRST_DELAY_S = 0.001
    MAX_DELAY_S = 0.005  # an existence check is one small master RPC: poll often, the wait is on the TTFT path

    def __init__(self, store: StoreConnector, keys: list[BlockKey], wait_s: float) -> None:
        self.store, self.keys, self.wait_s = store, keys, wait_s
        self.deadline = time.monotonic() + wait_s
        self.rows: torch.Tensor | None = None  # allocated by the first attempt, on a transfer thread
        self.todo = list(range(len(keys)))  # indexes not read yet
        self.delay = self.FIRST_DELAY_S
        self.attempts = 0
        self._busy_s = 0.0  # time spent reading (not waiting), for the transfer metric
        self.notice: Future[list[bool]] | None = None  # the store's word that the missing blocks committed

    @property
    def source(self) -> KVRows:
        if self.rows is None:
            raise RuntimeError("StoreLoad.source before a complete attempt()")
        return KVRows(self.rows)

    def done(self) -> None:
        pass  # the store keeps its objects; nothing to release

    def attempt(self) -> bool:
        """Read what is readable now; True when every block is in ``rows``.

        The first attempt reads straight away (the common case: all committed, one read);
        later ones first learn which of the rest exist (the commit notice, else an existence
        check; no lease taken) and read only those. When blocks are still missing and the store
        can notify, ``notice`` is set: the next attempt is due when it completes.
        Raises BlocksMissing once the deadline passes with blocks still absent.
        """
        s, self.attempts = self.store, self.attempts + 1
        start = time.perf_counter()
        if self.rows is None:
            self.rows = s.empty_rows(len(self.keys))
        todo = self.todo
        if self.attempts > 1 and todo:
            found = self._committed_now(todo)
            todo = [i for i, ok in zip(todo, found) if ok]
        if todo:
            got = s.client.get_blocks_into(s.layout, [self.keys[i] for i in todo], [self.rows[i] for i in todo])
            if self.attempts > 1 and not all(got):
                raise BlocksMissing("a KV block was evicted between its existence check and its read")
            read = {i for i, ok in zip(todo, got) if ok}
            self.todo = [i for i in self.todo if i not in read]
        self._busy_s += time.perf_counter() - start
        if not self.todo:
            s.observe("in", self.rows.numel() * self.rows.element_size(), self._busy_s)
            return True
        if self.wait_s <= 0:
            raise BlocksMissing(f"{len(self.todo)} of {len(self.keys)} KV blocks are not in the store (evicted or never written)")
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise BlocksMissing(
                f"{len(self.todo)} of {len(self.keys)} KV blocks did not reach the store within {self.wait_s:g} s "
                "(the prefill worker's write failed or stalled, or the blocks were evicted)"
            )
        notify = getattr(s.client, "when_blocks_committed", None)
        if notify is not None:
            self.notice = notify(s.layout, [self.keys[i] for i in self.todo], remaining)
        return False

    def _committed_now(self, todo: list[int]) -> list[bool]:
        notice, self.notice = self.notice, None
        if notice is not None and notice.done() and notice.exception() is None:
            return notice.result()
        return self.store.client.blocks_exist(self.store.layout, [self.keys[i] for i in todo])

    def next_delay(self) -> float:
        """Seconds until the next attempt (backs off from 1 ms to 5 ms)."""
        d, self.delay = self.delay, min(self.delay * 1.5, self.MAX_DELAY_S)
        return d
