"""Where KV enters the decode worker: imports of prefilled requests in the engine core.

start():      check the handle against this engine (layout, prompt, keys), reuse the local
              prefix cache, and pick the first connector that can deliver the rest here
              (device-direct pull on the same host, else the store). A load runs its attempts
              on a transfer thread (a store read may wait for blocks still being written); a
              failed load falls back to the next connector, and when none is left the request
              fails with NOT_FOUND (the router then recomputes it colocated).
              A load that can finish at once (a direct pull from a pool mapped already) runs on the
              core thread instead, so the request joins the next step.
loaded:       ``import_request`` with the load's KV source. A direct source then lands at once
              (``LLMEngine.land_import``: on a GPU a copy on a stream of its own, beside the step
              in flight); otherwise, or when blocks are short, the step that admits the request
              copies the blocks into its own (engine/kv_source.py).
after_step(): once a direct copy has finished on the device (or the engine dropped the request),
              tell the prefill worker it may free its blocks.
handoff:      seconds from an import reaching the core to its KV in this engine (direct: copied
              on the device, timed on the device's clock from an event recorded on arrival to
              the copy's end event, so the step the host spends noticing the copy is not
              counted; store: read into host rows, copied in by the admitting step).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from contracts.core_messages import ErrorKind, FromCore, RequestError
from contracts.kv_handle import KVHandle
from contracts.sampling import SamplingParams
from engine.errors import EngineError, UnknownRequest
from engine.llm_engine import LLMEngine
from kv_transfer.connector import KVConnector, KVLoad
from kv_transfer.direct import DirectConnector, DirectLoad
from kv_transfer.p2p import PeerTransferFailed
from kv_transfer.peer_pool import PeerPoolUnavailable
from kv_transfer.store import BlocksMissing
from kvstore.block_key import KVLayout, block_keys

Observe = Callable[[str, int, float], None]
Handoff = Callable[[str, float], None]  # (transport, seconds from the import's start to its KV in our pool)
PRUNE_EVERY_S = 5.0


@dataclass(slots=True)
class Import:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    salt: str
    handle: KVHandle
    first_token: int
    local_blocks: int  # leading blocks the local prefix cache already has
    wait_s: float
    candidates: list[KVConnector]
    load: KVLoad | None = None
    transport: str = ""  # the connector of the current load
    started: float = 0.0  # time.monotonic() when the import reached the core
    arrived: torch.cuda.Event | None = None  # on a GPU: an event recorded when the import reached the core


class ArrivalClock:
    """On a GPU, marks an import's arrival on the device's own clock: an event recorded on a
    stream of its own (idle, so the event completes at once) that a copy's end event can be
    timed against (``Event.elapsed_time`` works across streams of one device)."""

    def __init__(self, device: object) -> None:
        # high priority, as the landing copies' stream is: on a busy GPU an event on a normal-priority
        # stream was stamped after a copy that started later (docs/performance.md, session 10)
        self.stream = torch.cuda.Stream(device=device, priority=-1) if getattr(device, "type", "") == "cuda" else None

    def mark(self) -> torch.cuda.Event | None:
        if self.stream is None:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record(self.stream)
        return event

    @staticmethod
    def seconds(arrived: torch.cuda.Event | None, started: float, source: object) -> float:
        """Arrival -> the copy's end: on the device clock where both events exist, else the host's now."""
        events = getattr(source, "events", None)
        if arrived is not None and events is not None:
            return arrived.elapsed_time(events[1]) / 1e3
        return time.monotonic() - started


class KVImports:
    def __init__(
        self,
        engine: LLMEngine,
        connectors: list[KVConnector],
        layout: KVLayout,
        done: queue.Queue,
        later: Callable[[float, Callable[[], None]], None],
        send: Callable[[FromCore], None],
        observe: Observe,
        handoff: Handoff | None = None,
    ) -> None:
        self.engine, self.connectors, self.layout = engine, connectors, layout
        self.done, self.later, self.send, self.observe = done, later, send, observe
        self.handoff = handoff or (lambda transport, seconds: None)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="kv-import")
        self.block_size = engine.config.block_size
        self.loading: dict[str, Import] = {}  # waiting for their KV
        self.copying: dict[str, tuple[DirectLoad, Import]] = {}  # imported with a direct source: release once copied
        self.clock = ArrivalClock(getattr(engine.runner, "device", None))
        self._next_prune = 0.0

    def busy(self) -> bool:
        return bool(self.loading or self.copying)

    def num_waiting(self) -> int:
        return len(self.loading)

    def start(
        self, rid: str, prompt: list[int], sp: SamplingParams, salt: str, h: KVHandle, first: int, kv_wait_s: float
    ) -> None:
        mine = (self.layout.model_fingerprint, self.layout.dtype, self.block_size, self.layout.tp_size)
        if h.layout() != mine:
            raise ValueError(
                f"KV handle layout (fingerprint, dtype, block size, tp size) {h.layout()} does not match this worker's {mine}"
            )
        if h.num_tokens != len(prompt):
            raise ValueError(f"KV handle covers {h.num_tokens} tokens but the prompt has {len(prompt)}")
        keys = block_keys(prompt, self.engine.fingerprint, self.block_size, salt)
        if keys != list(h.block_keys) or bool(h.tail_key) != bool(len(prompt) % self.block_size):
            raise ValueError("KV handle block keys do not match the prompt (other tokens, cache salt or model)")
        sp.validate(self.engine.runner.vocab_size)
        candidates = [c for c in self.connectors if c.accepts(h)]
        if not candidates:
            raise BlocksMissing(
                "unknown KV handle / blocks evicted: no KV transport reaches this handle's blocks "
                "from here (no direct offer on this host and no store holding them)"
            )
        local = self.engine.cached_prefix_blocks(prompt, salt)
        imp = Import(rid, prompt, sp, salt, h, first, local, kv_wait_s, candidates)
        imp.started, imp.arrived = time.monotonic(), self.clock.mark()
        self.loading[rid] = imp
        self._begin(imp)

    def _begin(self, imp: Import) -> None:
        connector = imp.candidates.pop(0)
        imp.load, imp.transport = connector.load(imp.handle, imp.local_blocks, imp.wait_s), connector.name
        load = imp.load
        immediate = getattr(load, "immediate", None)
        if immediate is not None and immediate():
            # on the core thread: the request can join the very next step (through a transfer
            # thread it would land only after that step, one decode step later)
            try:
                complete = load.attempt()
            except Exception as exc:  # reported to the caller as a status, or the next transport
                self._failed(imp, load, exc)
                return
            if complete:
                self._loaded(imp, load)
                return

        def attempt() -> None:
            if self.loading.get(imp.request_id) is not imp:
                return  # aborted while waiting for its KV
            try:
                complete = load.attempt()
            except Exception as exc:  # reported to the caller as a status, or the next transport
                failure = exc  # `exc` is unbound once the except block ends
                self.done.put(lambda: self._failed(imp, load, failure))
                return
            if complete:
                self.done.put(lambda: self._loaded(imp, load))
            elif (notice := getattr(load, "notice", None)) is not None:
                notice.add_done_callback(lambda _f: self._resubmit(attempt))  # the store says when: no polling
            else:
                self.done.put(lambda: self.later(load.next_delay(), resubmit))

        def resubmit() -> None:
            self.pool.submit(attempt)

        resubmit()

    def _resubmit(self, attempt: Callable[[], None]) -> None:
        try:
            self.pool.submit(attempt)
        except RuntimeError:
            pass  # shutting down

    def _failed(self, imp: Import, load: KVLoad, exc: Exception) -> None:
        if self.loading.get(imp.request_id) is not imp or imp.load is not load:
            return
        if imp.candidates:
            self._begin(imp)  # e.g. the direct pull failed (peer gone): read the store instead
            return
        del self.loading[imp.request_id]
        if isinstance(exc, (BlocksMissing, PeerPoolUnavailable, PeerTransferFailed)):
            self.send(RequestError(imp.request_id, ErrorKind.NOT_FOUND, f"unknown KV handle / blocks evicted: {exc}"))
        else:
            self.send(RequestError(imp.request_id, ErrorKind.UNAVAILABLE, f"loading the KV blocks failed: {exc}"))

    def _loaded(self, imp: Import, load: KVLoad) -> None:
        if self.loading.get(imp.request_id) is not imp or imp.load is not load:
            return  # aborted while its KV was in flight
        del self.loading[imp.request_id]
        try:
            self.engine.import_request(
                imp.request_id,
                imp.prompt,
                imp.params,
                load.source,
                len(imp.prompt),
                imp.first_token,
                start_block=imp.local_blocks,
                cache_salt=imp.salt,
                evict_first=True,  # the prefill worker keeps these blocks: cache what only we have
            )
        except (EngineError, ValueError, UnknownRequest) as exc:
            load.done()
            kind = ErrorKind.INVALID_ARGUMENT if isinstance(exc, ValueError) else ErrorKind.INTERNAL
            self.send(RequestError(imp.request_id, kind, str(exc)))
            return
        if isinstance(load, DirectLoad):
            try:
                self.engine.land_import(imp.request_id)
            except Exception as exc:  # the copy could not be launched: the request fails, the core serves on
                self.engine.abort(imp.request_id)
                load.done()
                self.send(RequestError(imp.request_id, ErrorKind.INTERNAL, f"copying the KV blocks failed: {exc}"))
                return
            self.copying[imp.request_id] = (load, imp)
        else:
            load.done()
            self.handoff(imp.transport, time.monotonic() - imp.started)  # rows in this process; copied in when admitted

    def after_step(self) -> None:
        """Release the prefill side's blocks of every finished direct copy (or dropped request)."""
        for rid, (load, imp) in list(self.copying.items()):
            source = load.source
            if source.copy_finished():
                nbytes = source.num_rows * self.engine.runner.transfer_spec.bytes_per_block
                self.observe("in", nbytes, source.copy_s)
                self.handoff("direct", self.clock.seconds(imp.arrived, imp.started, source))
            elif source.copied_at is not None or self._still_pending(rid, source):
                continue  # the copy is running on the device, or still to come
            del self.copying[rid]
            load.done()
        if time.monotonic() >= self._next_prune:  # drop mapped pools of peers that exited (they pin memory)
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
            for c in self.connectors:
                if isinstance(c, DirectConnector):
                    c.peers.prune()

    def _still_pending(self, rid: str, source: object) -> bool:
        req = self.engine.requests.get(rid)
        return req is not None and req.seq.pending_kv is source  # not admitted yet: the copy is still to come

    def abort(self, rid: str) -> None:
        self.loading.pop(rid, None)
        copying = self.copying.pop(rid, None)
        if copying is not None:
            copying[0].source.wait_copied()  # the peer may reuse its blocks once released
            copying[0].done()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for load, _ in self.copying.values():
            load.source.wait_copied()
            load.done()
        self.copying.clear()
