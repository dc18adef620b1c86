"""The engine-core process: a busy loop around LLMEngine.step() fed over ZMQ.

Loop: take every queued message -> take finished KV transfers -> step the engine ->
send its outputs. When there is nothing to compute it sleeps on the ZMQ poller
(short timeouts only while a KV transfer is in flight), so an idle worker uses no CPU.
KV leaves a prefill worker through prefill_worker/kv_export.py and enters a decode worker
through decode_worker/kv_import.py; both drive the connectors of kv_transfer/ (the store,
and the device-direct pull between engines on one host).
The core exits when its parent (the gRPC server process) dies or asks it to.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import queue
import signal
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable

import msgspec
import torch
import zmq

from contracts.core_messages import (
    Abort,
    AddRequest,
    CoreInfo,
    ErrorKind,
    FromCore,
    Handoff,
    ImportRequest,
    LoadQuery,
    LoadReport,
    Queued,
    Ready,
    RequestDelta,
    RequestError,
    Shutdown,
    StepOutputs,
    ToCore,
    Transfer,
    decode_to_core,
    encode,
)
from contracts.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from contracts.sampling import InvalidSamplingParams, SamplingParams
from decode_worker.kv_import import KVImports
from engine.errors import EngineError, OutOfKVBlocks, PromptTooLong
from engine.llm_engine import LLMEngine
from engine.outputs import PrefillProgress, RequestOutput
from engine.server.core_config import CoreConfig
from kv_transfer.connector import KVConnector
from kv_transfer.direct import DirectConnector
from kv_transfer.p2p import PeerConnector, PeerSender
from kv_transfer.peer_pool import PeerPoolUnavailable, remove_orphaned_pools, shm_pool_path
from kv_transfer.store import BlocksMissing, StoreConnector, StorePutFailed, dtype_name
from kvstore.block_key import KVLayout
from kvstore.errors import StoreError
from kvstore.event_publisher import KVEventPublisher
from prefill_worker.kv_export import PrefillJobs

IDLE_POLL_MS = 500  # also how often an idle core checks that its parent lives
TRANSFER_POLL_MS = 2
WARMUP_ID = "__warmup__"


def run_engine_core(config: CoreConfig) -> None:
    """multiprocessing entry point."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    # SIGTERM to the worker's process group reaches the core too: leave through run()'s cleanup
    # (its shared KV pool file stays in /dev/shm otherwise) instead of dying on the spot
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        core = EngineCore(config)
    except BaseException:
        if config.engine.kv_pool_file:  # created before the failure: /dev/shm keeps it until someone unlinks it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.engine.kv_pool_file)
        raise
    core.run()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def error_kind(exc: Exception) -> ErrorKind:
    if isinstance(exc, (BlocksMissing, PeerPoolUnavailable)):
        return ErrorKind.NOT_FOUND
    if isinstance(exc, (InvalidSamplingParams, PromptTooLong, OutOfKVBlocks, ValueError, TypeError)):
        return ErrorKind.INVALID_ARGUMENT
    if isinstance(exc, (StorePutFailed, StoreError, ConnectionError, OSError)):
        return ErrorKind.UNAVAILABLE
    return ErrorKind.INTERNAL


class EngineCore:
    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        ctx: zmq.Context = zmq.Context.instance()
        self.inbox = ctx.socket(zmq.PULL)
        self.inbox.connect(config.input_endpoint)
        self.outbox = ctx.socket(zmq.PUSH)
        self.outbox.setsockopt(zmq.LINGER, 1000)
        self.outbox.connect(config.output_endpoint)
        config.engine.kv_events_medium = "gpu" if torch.cuda.is_available() else "cpu"
        self.medium = config.engine.kv_events_medium
        self._cached_keys: set[bytes] = set()
        self._keys_lock = threading.Lock()
        self._arrivals: dict[str, float] = {}  # request id -> arrival time, until first scheduled
        self._step_start = time.perf_counter()
        self.epoch = uuid.uuid4().hex[:12]  # this incarnation: a handle from a restarted worker names another
        self.zmq = ctx
        direct_sender = config.role == "prefill" and config.kv_transport == "direct" and config.tp_size == 1
        if direct_sender and not torch.cuda.is_available():
            remove_orphaned_pools()
            config.engine.kv_pool_file = shm_pool_path(config.worker_id, self.epoch)  # a peer maps it
        self.engine = LLMEngine(config.engine, on_kv_events=self._on_kv_events, on_prefill_progress=self._on_progress)
        self.block_size = config.engine.block_size
        # exported rows hold all KV heads at any engine TP size (engine/executor.py), so store keys name tp 0 of 1
        self.layout = KVLayout(self.engine.fingerprint, dtype_name(self.engine.runner.dtype), self.block_size, 0, 1)
        self.done: queue.Queue[Callable[[], None]] = queue.Queue()  # completions from transfer threads
        self._later: list[tuple[float, Callable[[], None]]] = []  # (due time, fn): retries of pending loads
        # before the connectors: a store connector for Mooncake announces its writes on it
        self.publisher = KVEventPublisher(config.kv_events_bind, config.kv_snapshot_bind, config.worker_id, self._snapshot)
        self.connectors = self._connectors(direct_sender)
        self.exports = (
            PrefillJobs(self.engine, self.connectors, self.layout, config.worker_id, self.epoch, self.done, self.send)
            if config.role == "prefill" and self.connectors
            else None
        )
        self.imports = KVImports(
            self.engine,
            self.connectors,
            self.layout,
            self.done,
            self.later,
            self.send,
            lambda d, n, s: self._observe_transfer("direct", d, n, s),
            lambda transport, s: self.done.put(lambda: self.send(Handoff(transport, s))),
        )
        self._warm_up()
        self.send(
            Ready(
                CoreInfo(
                    config.worker_id,
                    self.engine.fingerprint,
                    self.layout.dtype,
                    self.block_size,
                    config.tp_size,
                    self.engine.blocks.num_blocks,
                    self._advertised(self.publisher.pub_endpoint),
                    self._advertised(self.publisher.snapshot_endpoint),
                )
            )
        )

    def _connectors(self, direct_sender: bool) -> list[KVConnector]:
        """Preference order for a reader: the direct pull (same host), the point-to-point send (any host), the store."""
        c = self.config
        found: list[KVConnector] = []
        runner = self.engine.runner
        peer_sender = c.role == "prefill" and c.kv_transport == "p2p" and c.tp_size == 1
        if c.tp_size == 1:  # the direct pull maps one pool; a TP engine's KV is spread over its ranks
            pool = runner.kv.pool if direct_sender else None
            found.append(
                DirectConnector(
                    self.zmq, runner.device, self.epoch, c.kv_lease_s, pool, c.engine.kv_pool_file, self.engine.block_ids
                )
            )
            sender = None
            if peer_sender:
                bind = urllib.parse.urlsplit(c.kv_events_bind).hostname or "0.0.0.0"
                wake = functools.partial(self.done.put, lambda: None)
                sender = PeerSender(self.zmq, runner.kv.pool, bind, c.advertise_host, self.epoch, wake)
            found.append(
                PeerConnector(
                    self.zmq,
                    runner.device,
                    functools.partial(self._observe_transfer, "p2p"),
                    c.kv_lease_s,
                    sender,
                    self.engine.block_ids,
                )
            )
        if c.kvstore:
            # beside a direct or point-to-point offer, store writes are a cache
            budget = c.store_write_budget if direct_sender or peer_sender else None
            observe = functools.partial(self._observe_transfer, "store")
            found.append(
                StoreConnector(
                    c.kvstore,
                    self.layout,
                    runner.transfer_spec,
                    observe,
                    self.engine.export_blocks,
                    budget,
                    announce_on=self.publisher if c.role == "prefill" else None,
                )
            )
        return found

    # ---- plumbing ---------------------------------------------------------------------------------
    def later(self, delay_s: float, fn: Callable[[], None]) -> None:
        self._later.append((time.monotonic() + delay_s, fn))

    def send(self, msg: FromCore) -> None:
        self.outbox.send(encode(msg))

    def _advertised(self, endpoint: str) -> str:
        for wildcard in ("0.0.0.0", "*", "[::]"):
            endpoint = endpoint.replace(f"//{wildcard}:", f"//{self.config.advertise_host}:")
        return endpoint

    def _observe_transfer(self, transport: str, direction: str, nbytes: int, seconds: float) -> None:
        self.done.put(lambda: self.send(Transfer(transport, direction, nbytes, seconds)))

    def _on_kv_events(self, events: list[KVEvent]) -> None:
        with self._keys_lock:
            for e in events:
                if isinstance(e, BlockStored):
                    self._cached_keys.update(e.keys)
                elif isinstance(e, BlockRemoved):
                    self._cached_keys.difference_update(e.keys)
                elif isinstance(e, AllBlocksCleared):
                    self._cached_keys.clear()
        self.publisher.publish(events)

    def _snapshot(self) -> dict[str, list[bytes]]:
        with self._keys_lock:
            state = {self.medium: list(self._cached_keys)}
        for connector in getattr(self, "connectors", []):  # the snapshot thread may ask before they exist
            if isinstance(connector, StoreConnector) and connector.announcer is not None:
                state.update(connector.announcer.snapshot())
        return state

    def _on_progress(self, progress: PrefillProgress) -> None:
        self._mark_scheduled(progress.request_id)
        if self.exports is not None:
            self.exports.on_progress(progress)

    def _warm_up(self) -> None:
        """One tiny request through prefill and decode, so that the first real one is not slow."""
        self.engine.add_request(WARMUP_ID, [1, 2, 3], SamplingParams(temperature=0.0, max_tokens=2))
        while self.engine.has_unfinished():
            self.engine.step()

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        parent = multiprocessing.parent_process()
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        try:
            while parent is None or parent.is_alive():
                if self.engine.has_unfinished():
                    timeout = 0
                elif self.imports.busy() or (self.exports is not None and self.exports.busy()):
                    timeout = TRANSFER_POLL_MS
                else:
                    timeout = IDLE_POLL_MS
                if poller.poll(timeout) and not self._take_messages():
                    return
                self._take_completions()
                self._run_due()
                if self.exports is not None:
                    self.exports.finish_ready()
                if self.engine.has_unfinished():
                    self._step()
                    self.imports.after_step()
        finally:
            self._close()

    def _close(self) -> None:
        if self.exports is not None:
            self.exports.drain()  # answered requests' blocks still on their way to the store
        self.imports.close()
        self.publisher.close()
        for c in self.connectors:
            c.close()
        self.engine.shutdown()
        if self.config.engine.kv_pool_file:
            try:
                os.unlink(self.config.engine.kv_pool_file)  # readers that mapped it keep their mapping
            except FileNotFoundError:
                pass

    def _mark_scheduled(self, rid: str) -> None:
        """Queue time = arrival at the core until the start of the first step that computes the request."""
        arrived = self._arrivals.pop(rid, None)
        if arrived is not None:
            self.send(Queued(max(0.0, self._step_start - arrived)))

    def _step(self) -> None:
        batch = len(self.engine.scheduler.running) + len(self.engine.scheduler.waiting)
        start = self._step_start = time.perf_counter()
        outputs = self.engine.step()
        elapsed = time.perf_counter() - start
        sent = []
        for out in outputs:
            self._mark_scheduled(out.request_id)
            if self.exports is not None and self.exports.owns(out.request_id):
                self.exports.on_output(out)
            else:
                sent.append(_delta(out))
        if sent or outputs:
            self.send(StepOutputs(sent, elapsed, batch))

    def _take_messages(self) -> bool:
        """Handle every queued message; False on shutdown."""
        while True:
            try:
                msg = decode_to_core(self.inbox.recv(zmq.NOBLOCK))
            except zmq.Again:
                return True
            if isinstance(msg, Shutdown):
                return False
            try:
                self._handle(msg)
            except (EngineError, ValueError, TypeError, LookupError) as exc:
                rid = getattr(msg, "request_id", "")
                self._arrivals.pop(rid, None)
                self.send(RequestError(rid, error_kind(exc), str(exc)))

    def _handle(self, msg: ToCore) -> None:
        match msg:
            case AddRequest(rid, prompt, params, salt, prefill_only):
                self._arrivals[rid] = time.perf_counter()
                if prefill_only and self.exports is not None:
                    self.exports.start(rid, prompt, params, salt)
                else:
                    self.engine.add_request(rid, prompt, params, prefill_only=prefill_only, cache_salt=salt)
            case ImportRequest(rid, prompt, params, salt, handle, first, kv_wait_s):
                self._arrivals[rid] = time.perf_counter()
                self.imports.start(rid, prompt, params, salt, handle, first, kv_wait_s)
            case Abort(rid):
                self._arrivals.pop(rid, None)
                self.imports.abort(rid)
                if self.exports is None or self.exports.abort(rid):
                    self.engine.abort(rid)
            case LoadQuery(token):
                load = self.engine.load()
                waiting = load.waiting + self.imports.num_waiting() + (self.exports.num_fetching() if self.exports else 0)
                self.send(LoadReport(token, msgspec.structs.replace(load, waiting=waiting)))

    def _take_completions(self) -> None:
        while True:
            try:
                self.done.get_nowait()()
            except queue.Empty:
                return

    def _run_due(self) -> None:
        if not self._later:
            return
        now = time.monotonic()
        due = [fn for t, fn in self._later if t <= now]
        self._later = [(t, fn) for t, fn in self._later if t > now]
        for fn in due:
            fn()


def _delta(out: RequestOutput) -> RequestDelta:
    return RequestDelta(
        out.request_id,
        out.new_token_ids,
        out.new_logprobs,
        out.finished,
        out.finish_reason,
        out.num_cached_tokens,
        len(out.prompt_token_ids),
        len(out.output_token_ids),
    )
