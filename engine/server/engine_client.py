"""AsyncEngineClient: the gRPC server's handle on its engine-core process.

Starts the core (multiprocessing spawn), binds the two ZMQ pipes, and routes what
the core sends to per-request asyncio queues. A watchdog notices a dead core at
once (process sentinel) and fails every in-flight request with EngineDead.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

import zmq
import zmq.asyncio

from contracts.core_messages import (
    Abort,
    CoreInfo,
    EngineLoad,
    ErrorKind,
    FromCore,
    Handoff,
    LoadQuery,
    LoadReport,
    Prefilled,
    Queued,
    Ready,
    RequestDelta,
    RequestError,
    Shutdown,
    StepOutputs,
    ToCore,
    Transfer,
    decode_from_core,
    encode,
)
from contracts.lifeline import run_tied
from engine.server.core_config import CoreConfig
from engine.server.engine_core import run_engine_core

STARTUP_TIMEOUT_S = 600.0


class EngineDead(RuntimeError):
    """The engine-core process exited; the worker cannot serve until restarted."""


class RequestFailed(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Aborted:
    """Put on a request's queue when it is aborted here (Abort RPC, or its handler's cleanup)."""


# What a request's queue carries: its outputs, its answer, its failure.
RequestEvent = RequestDelta | Prefilled | RequestError | Aborted | EngineDead


@dataclass(slots=True)
class StepStats:
    seconds: float
    batch_size: int


@dataclass(slots=True)
class ClientHooks:
    """Observers the metrics module plugs in (all optional)."""

    on_step: Callable[[StepStats], None] | None = None
    on_transfer: Callable[[str, str, int, float], None] | None = None  # (transport, direction, bytes, seconds)
    on_handoff: Callable[[str, float], None] | None = None  # (transport, seconds): an import's KV is in the pool
    on_queued: Callable[[float], None] | None = None


@dataclass(slots=True)
class AsyncEngineClient:
    config: CoreConfig
    hooks: ClientHooks = field(default_factory=ClientHooks)
    info: CoreInfo | None = None
    dead: str = ""  # why the core is gone ("" while it lives)
    _queues: dict[str, asyncio.Queue[RequestEvent]] = field(default_factory=dict)
    _load_waiters: dict[int, asyncio.Future[EngineLoad]] = field(default_factory=dict)
    _tokens: itertools.count = field(default_factory=itertools.count)
    _proc: BaseProcess | None = None
    _ready: asyncio.Future[CoreInfo] | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _ctx: zmq.asyncio.Context = field(default_factory=zmq.asyncio.Context)
    _in: zmq.asyncio.Socket = field(init=False)  # server -> core
    _out: zmq.asyncio.Socket = field(init=False)  # core -> server
    _closing: bool = False

    def __post_init__(self) -> None:
        self._in = self._ctx.socket(zmq.PUSH)
        self._in.setsockopt(zmq.LINGER, 0)
        self._out = self._ctx.socket(zmq.PULL)

    async def start(self) -> CoreInfo:
        """Spawn the core and wait until it has loaded the model and warmed up."""
        base = os.path.join(tempfile.gettempdir(), f"splitserve-{uuid.uuid4().hex[:12]}")
        self.config.input_endpoint, self.config.output_endpoint = f"ipc://{base}-in", f"ipc://{base}-out"
        self._in.bind(self.config.input_endpoint)
        self._out.bind(self.config.output_endpoint)
        self._ready = asyncio.get_running_loop().create_future()
        self._proc = proc = multiprocessing.get_context("spawn").Process(
            target=run_tied,
            args=(os.getpid(), run_engine_core, self.config),
            name=f"engine-core-{self.config.worker_id}",
            daemon=True,
        )
        proc.start()
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._watch(proc))]
        self.info = await asyncio.wait_for(self._ready, STARTUP_TIMEOUT_S)
        return self.info

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ---- requests ---------------------------------------------------------------------------------
    def open(self, request_id: str) -> asyncio.Queue[RequestEvent]:
        """Register a request before sending it; its messages arrive on the returned queue."""
        if self.dead:
            raise EngineDead(self.dead)
        if request_id in self._queues:
            raise RequestFailed(ErrorKind.INVALID_ARGUMENT, f"request id {request_id!r} is already in flight here")
        q: asyncio.Queue[RequestEvent] = asyncio.Queue()
        self._queues[request_id] = q
        return q

    def open_requests(self) -> set[str]:
        return set(self._queues)

    def close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    async def send(self, msg: ToCore) -> None:
        if self.dead:
            raise EngineDead(self.dead)
        await self._in.send(encode(msg))

    async def abort(self, request_id: str) -> None:
        self.close(request_id)
        if not self.dead:
            await self._in.send(encode(Abort(request_id)))

    def abort_nowait(self, request_id: str) -> None:
        """Abort (also from a cancelled handler's cleanup, where awaiting is not safe)."""
        q = self._queues.pop(request_id, None)
        if q is not None:
            q.put_nowait(Aborted())  # wake the handler still waiting on it
        if not self.dead:
            self._in.send(encode(Abort(request_id)))

    async def load(self, timeout_s: float = 5.0) -> EngineLoad:
        token = next(self._tokens)
        fut = asyncio.get_running_loop().create_future()
        self._load_waiters[token] = fut
        try:
            await self.send(LoadQuery(token))
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._load_waiters.pop(token, None)

    # ---- background tasks -------------------------------------------------------------------------
    async def _receive(self) -> None:
        while True:
            self._dispatch(decode_from_core(await self._out.recv()))

    def _dispatch(self, msg: FromCore) -> None:
        match msg:
            case StepOutputs(outputs, step_s, batch_size):
                for out in outputs:
                    self._deliver(out.request_id, out)
                if self.hooks.on_step is not None:
                    self.hooks.on_step(StepStats(step_s, batch_size))
            case Prefilled() | RequestError():
                self._deliver(msg.request_id, msg)
            case LoadReport(token, load):
                fut = self._load_waiters.get(token)
                if fut is not None and not fut.done():
                    fut.set_result(load)
            case Queued(seconds) if self.hooks.on_queued is not None:
                self.hooks.on_queued(seconds)
            case Transfer(transport, direction, nbytes, seconds) if self.hooks.on_transfer is not None:
                self.hooks.on_transfer(transport, direction, nbytes, seconds)
            case Handoff(transport, seconds) if self.hooks.on_handoff is not None:
                self.hooks.on_handoff(transport, seconds)
            case Ready(info) if self._ready is not None and not self._ready.done():
                self._ready.set_result(info)

    def _deliver(self, request_id: str, event: RequestEvent) -> None:
        q = self._queues.get(request_id)
        if q is not None:
            q.put_nowait(event)

    async def _watch(self, proc: BaseProcess) -> None:
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        loop.add_reader(proc.sentinel, gone.set)
        try:
            await gone.wait()
        finally:
            loop.remove_reader(proc.sentinel)
        proc.join(1)
        if self._closing:
            self.dead = "the worker is shutting down"
            return
        self.dead = f"the engine-core process exited (exit code {proc.exitcode}); this worker must be restarted"
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EngineDead(self.dead))
        for q in self._queues.values():
            q.put_nowait(EngineDead(self.dead))
        for fut in self._load_waiters.values():
            if not fut.done():
                fut.set_exception(EngineDead(self.dead))

    async def shutdown(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is not None and proc.is_alive() and not self.dead:
            await self._in.send(encode(Shutdown()))
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 10)
            if proc.is_alive():
                proc.kill()
        for t in self._tasks:
            t.cancel()
        self._ctx.destroy(linger=0)
        for ep in (self.config.input_endpoint, self.config.output_endpoint):
            try:
                os.unlink(ep.removeprefix("ipc://"))
            except FileNotFoundError:
                pass
