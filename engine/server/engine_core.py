"""The engine-core process: a busy loop around LLMEngine.step() fed over ZMQ.

Loop: take every queued message -> take finished KV transfers -> step the engine ->
send its outputs. When there is nothing to compute it sleeps on the ZMQ poller
(short timeouts only while a KV transfer is in flight), so an idle worker uses no CPU.
KV moves between engine blocks and the store on a thread pool (kv_transfer.py);
prefill requests stream their blocks to the store as chunks finish (prefill_jobs.py).
The core exits when its parent (the gRPC server process) dies or asks it to.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Callable

import torch
import zmq

from engine.errors import EngineError, OutOfKVBlocks, PromptTooLong, UnknownRequest
from engine.llm_engine import LLMEngine
from engine.outputs import PrefillProgress, RequestOutput
from engine.sampling_params import InvalidSamplingParams, SamplingParams
from engine.server.core_config import CoreConfig
from engine.server.kv_transfer import BlocksMissing, KVTransfer, PendingFetch, StorePutFailed, dtype_name
from engine.server.prefill_jobs import PrefillJobs
from engine.server.protocol import CoreInfo, ErrorKind, handle_from, pack, record, unpack
from kvstore.block_key import KVLayout, block_keys
from kvstore.events import KVEvent, KVEventPublisher, BlockRemoved, BlockStored, AllBlocksCleared

IDLE_POLL_MS = 500  # also how often an idle core checks that its parent lives
TRANSFER_POLL_MS = 2
WARMUP_ID = "__warmup__"


def run_engine_core(config: CoreConfig) -> None:
    """multiprocessing entry point."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    EngineCore(config).run()


def error_kind(exc: Exception) -> ErrorKind:
    if isinstance(exc, BlocksMissing):
        return ErrorKind.NOT_FOUND
    if isinstance(exc, (InvalidSamplingParams, PromptTooLong, OutOfKVBlocks, ValueError, TypeError)):
        return ErrorKind.INVALID_ARGUMENT
    if isinstance(exc, (StorePutFailed, ConnectionError, OSError)):
        return ErrorKind.UNAVAILABLE
    return ErrorKind.INTERNAL


class EngineCore:
    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        ctx = zmq.Context.instance()
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
        self.engine = LLMEngine(config.engine, on_kv_events=self._on_kv_events, on_prefill_progress=self._on_progress)
        self.block_size = config.engine.block_size
        # exported rows hold all KV heads at any engine TP size (engine/executor.py), so store keys name tp 0 of 1
        self.layout = KVLayout(self.engine.fingerprint, dtype_name(self.engine.runner.dtype), self.block_size, 0, 1)
        self.done: queue.Queue[Callable[[], None]] = queue.Queue()  # completions from transfer threads
        self.transfer = (
            KVTransfer.connect(config.kvstore, self.layout, self.engine.runner.transfer_spec, self._observe_transfer)
            if config.kvstore else None
        )
        self.jobs = PrefillJobs(self.engine, self.transfer, self.done, self.send) if self.transfer else None
        self.fetching: dict[str, PendingFetch] = {}  # decode imports waiting for their KV
        self._later: list[tuple[float, Callable[[], None]]] = []  # (due time, fn): retries of pending fetches
        self.publisher = KVEventPublisher(
            config.kv_events_bind, config.kv_snapshot_bind, config.worker_id, self._snapshot
        )
        self._warm_up()
        self.send(
            "ready",
            record(CoreInfo(
                config.worker_id, self.engine.fingerprint, self.layout.dtype, self.block_size, config.tp_size,
                self.engine.blocks.num_blocks, self._advertised(self.publisher.pub_endpoint),
                self._advertised(self.publisher.snapshot_endpoint),
            )),
        )

    # ---- plumbing ---------------------------------------------------------------------------------
    def send(self, *parts: object) -> None:
        self.outbox.send(pack(*parts))

    def _advertised(self, endpoint: str) -> str:
        for wildcard in ("0.0.0.0", "*", "[::]"):
            endpoint = endpoint.replace(f"//{wildcard}:", f"//{self.config.advertise_host}:")
        return endpoint

    def _observe_transfer(self, direction: str, nbytes: int, seconds: float) -> None:
        self.done.put(lambda: self.send("transfer", direction, nbytes, seconds))

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
            return {self.medium: list(self._cached_keys)}

    def _on_progress(self, progress: PrefillProgress) -> None:
        self._mark_scheduled(progress.request_id)
        if self.jobs is not None:
            self.jobs.on_progress(progress)

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
                elif self.fetching or (self.jobs is not None and self.jobs.busy()):
                    timeout = TRANSFER_POLL_MS
                else:
                    timeout = IDLE_POLL_MS
                if poller.poll(timeout) and not self._take_messages():
                    return
                self._take_completions()
                self._run_due()
                if self.jobs is not None:
                    self.jobs.finish_ready()
                if self.engine.has_unfinished():
                    self._step()
        finally:
            if self.jobs is not None:
                self.jobs.drain()  # answered requests' blocks still on their way to the store
            self.publisher.close()
            if self.transfer is not None:
                self.transfer.close()
            self.engine.shutdown()

    def _mark_scheduled(self, rid: str) -> None:
        """Queue time = arrival at the core until the start of the first step that computes the request."""
        arrived = self._arrivals.pop(rid, None)
        if arrived is not None:
            self.send("queued", max(0.0, self._step_start - arrived))

    def _step(self) -> None:
        batch = len(self.engine.scheduler.running) + len(self.engine.scheduler.waiting)
        start = self._step_start = time.perf_counter()
        outputs = self.engine.step()
        elapsed = time.perf_counter() - start
        sent = []
        for out in outputs:
            self._mark_scheduled(out.request_id)
            if self.jobs is not None and self.jobs.owns(out.request_id):
                self.jobs.on_output(out)
            else:
                sent.append(_wire_output(out))
        if sent or outputs:
            self.send("out", sent, elapsed, batch)

    def _take_messages(self) -> bool:
        """Handle every queued message; False on shutdown."""
        while True:
            try:
                msg = unpack(self.inbox.recv(zmq.NOBLOCK))
            except zmq.Again:
                return True
            kind = msg[0]
            if kind == "shutdown":
                return False
            try:
                self._handle(kind, msg)
            except (EngineError, ValueError, TypeError, KeyError) as exc:
                self._arrivals.pop(msg[1], None)
                self.send("error", msg[1], error_kind(exc).value, str(exc))

    def _handle(self, kind: str, msg: list) -> None:
        if kind == "add":
            _, rid, prompt, params, salt, prefill_only = msg
            self._arrivals[rid] = time.perf_counter()
            sp = SamplingParams.from_dict(params)
            if prefill_only and self.jobs is not None:
                self.jobs.start(rid, prompt, sp, salt)
            else:
                self.engine.add_request(rid, prompt, sp, prefill_only=prefill_only, cache_salt=salt)
        elif kind == "import":
            self._arrivals[msg[1]] = time.perf_counter()
            self._start_import(*msg[1:])
        elif kind == "abort":
            rid = msg[1]
            self._arrivals.pop(rid, None)
            self.fetching.pop(rid, None)
            if self.jobs is None or self.jobs.abort(rid):
                self.engine.abort(rid)
        elif kind == "load":
            load = self.engine.load()
            self.send("load", msg[1], {
                "running": load.running, "waiting": load.waiting + len(self.fetching)
                + (self.jobs.num_fetching() if self.jobs else 0),
                "held": load.held, "kv_usage": load.kv_usage, "queued_prefill_tokens": load.queued_prefill_tokens,
                "active_blocks": load.active_blocks, "total_blocks": load.total_blocks,
                "prefix_cache_queries": load.prefix_cache_queries, "prefix_cache_hits": load.prefix_cache_hits,
            })
        else:
            raise ValueError(f"unknown core message {kind!r}")

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

    # ---- decode: import a prefilled request ---------------------------------------------------------
    def _start_import(self, rid: str, prompt: list[int], params: dict, salt: str, handle: dict, first: int,
                      kv_wait_s: float = 0.0) -> None:
        if self.transfer is None:
            raise ValueError("this worker has no --kvstore; it cannot import a KV handle")
        h = handle_from(handle)
        mine = (self.layout.model_fingerprint, self.layout.dtype, self.block_size, self.layout.tp_size)
        theirs = (h.model_fingerprint, h.dtype, h.block_size, h.tp_size)
        if mine != theirs:
            raise ValueError(f"KV handle layout (fingerprint, dtype, block size, tp size) {theirs} does not match this worker's {mine}")
        if h.num_tokens != len(prompt):
            raise ValueError(f"KV handle covers {h.num_tokens} tokens but the prompt has {len(prompt)}")
        keys = block_keys(prompt, self.engine.fingerprint, self.block_size, salt)
        if keys != list(h.block_keys) or bool(h.tail_key) != bool(len(prompt) % self.block_size):
            raise ValueError("KV handle block keys do not match the prompt (other tokens, cache salt or model)")
        sp = SamplingParams.from_dict(params)
        sp.validate(self.engine.runner.vocab_size)
        local = self.engine.cached_prefix_blocks(prompt, salt)
        wanted = keys[local:] + ([h.tail_key] if h.tail_key else [])
        # blocks_pending: the prefill worker answered before its last puts committed -> wait for them
        pending = self.fetching[rid] = self.transfer.pending_fetch(wanted, kv_wait_s if h.blocks_pending else 0.0)

        def attempt() -> None:
            if self.fetching.get(rid) is not pending:
                return  # aborted while waiting for its KV
            try:
                complete = pending.attempt()
            except Exception as exc:  # noqa: BLE001 - reported to the caller as a status
                failure = exc  # `exc` is unbound once the except block ends
                self.done.put(lambda: self._import_failed(rid, pending, failure))
                return
            if complete:
                self.done.put(lambda: self._import_ready(rid, pending, prompt, sp, salt, first, local))
            else:
                self.done.put(lambda: self._retry_fetch(rid, pending, attempt))

        self.transfer.submit(attempt)

    def _retry_fetch(self, rid: str, pending: PendingFetch, attempt: Callable[[], None]) -> None:
        if self.fetching.get(rid) is pending:
            self._later.append((time.monotonic() + pending.next_delay(), lambda: self.transfer.submit(attempt)))

    def _import_failed(self, rid: str, pending: PendingFetch, exc: Exception) -> None:
        if self.fetching.get(rid) is pending:
            del self.fetching[rid]
            message = f"unknown KV handle / blocks evicted: {exc}" if isinstance(exc, BlocksMissing) else str(exc)
            self.send("error", rid, error_kind(exc).value, message)

    def _import_ready(self, rid, pending, prompt, sp, salt, first, local) -> None:  # type: ignore[no-untyped-def]
        if self.fetching.get(rid) is not pending:
            return  # aborted while its KV was in flight
        del self.fetching[rid]
        try:
            self.engine.import_request(rid, prompt, sp, pending.rows, len(prompt), first, start_block=local, cache_salt=salt)
        except (EngineError, ValueError, UnknownRequest) as exc:
            self.send("error", rid, error_kind(exc).value, str(exc))


def _wire_output(out: RequestOutput) -> list:
    lps = None
    if out.new_logprobs is not None:
        lps = [[lp.token_id, lp.logprob, [list(t) for t in lp.top]] for lp in out.new_logprobs]
    return [out.request_id, out.new_token_ids, lps, out.finished, out.finish_reason, out.num_cached_tokens,
            len(out.prompt_token_ids), len(out.output_token_ids)]
