"""Router -> workers: run one request on the workers a Decision names, with failover.

Disaggregated: PrefillService.Prefill, then DecodeService.Generate (stream) with the
KV handle and the first token. Colocated: Generate without a KV handle.
Failover: a failed prefill falls back to colocated on the chosen decode worker (a lost
prefill worker or a store that cannot take the KV must not fail the request). A decode
that fails before its first token after a prefill recomputes the prompt colocated when
the sampling is replayable (greedy or seeded: the colocated first token equals the
prefill's, which was already streamed and is dropped from the new stream): on the same
worker when it said NOT_FOUND (the KV never reached the store or left it), on another
decode worker otherwise. Unreplayable sampling retries on another decode worker with
the same KV handle. Every KV-path failure also opens a circuit breaker
(kv_path_breaker.py): new requests go colocated until a probe succeeds. A failure after tokens were
streamed raises WorkerStreamError so that the API ends the stream with an error
event. Every RPC carries the request's deadline (--request-timeout, all retries
included) and every wait on a worker a silence bound: --stall-timeout (default 5 s)
while the pool's health checks fail for that worker (stopped, wedged, unreachable),
the longer chunk timeout otherwise; so a stalled worker's requests fail over before
their first token, or end with a clear error after it, and a stream never hangs. Closing the generator early
(client gone) sends Abort to the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from contracts.rpc import worker_pb2, worker_pb2_grpc
from router.kv_path_breaker import KVPathBreaker
from router.scheduler import Decision, Mode
from router.worker_pool import WorkerPool

log = logging.getLogger(__name__)
T = TypeVar("T")
STALL_POLL_S = 0.25  # how often a waiting request looks at its worker's health

# Non-streamed requests of at most this many output tokens are decoded in one unary call
# (DecodeService.GenerateUnary): ~150 us less router CPU each than a stream, about a tenth of a
# short request's cost; their whole generation is held to the chunk timeout.
UNARY_MAX_TOKENS = 16

Redecide = Callable[[frozenset[str]], Decision]  # exclude these addresses, decide again


class WorkerStreamError(RuntimeError):
    """The request failed after output was already streamed, or every retry failed."""


class WorkerStalled(asyncio.TimeoutError):
    """A worker sent nothing within the allowed silence (see WorkerBackend._watched)."""


@dataclass(slots=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: worker_pb2.SamplingParams
    cache_salt: str = ""
    # Decode in one unary call (GenerateUnary): for a short, non-streamed request. The whole
    # generation is then held to the chunk timeout, as the wait for a stream's first chunk is.
    unary: bool = False


@dataclass(slots=True)
class TokenChunk:
    token_ids: list[int]
    logprobs: list[worker_pb2.TokenLogprob] = field(default_factory=list)
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    num_cached_tokens: int = 0


@dataclass(slots=True)
class WorkerBackend:
    pool: WorkerPool
    prefill_timeout_s: float = 120.0
    chunk_timeout_s: float = 60.0  # longest silence tolerated inside a Generate stream
    max_attempts: int = 3
    stall_timeout_s: float = 5.0  # longest silence tolerated from a worker that fails its health checks
    request_timeout_s: float = 600.0  # the whole request, every retry included: the workers' gRPC deadline
    kv_path: KVPathBreaker = field(default_factory=KVPathBreaker)
    stream_only: set[str] = field(default_factory=set)  # decode workers that answered GenerateUnary UNIMPLEMENTED

    async def generate(
        self, request: GenerationRequest, decision: Decision, redecide: Redecide
    ) -> AsyncGenerator[TokenChunk, None]:
        """The request's tokens; whatever the outcome, nothing of it stays counted on a worker afterwards."""
        deadline = time.monotonic() + self.request_timeout_s
        excluded: set[str] = set()
        prefill: worker_pb2.PrefillResponse | None = None
        first = decision
        streamed_first: int | None = None  # after a fallback to colocated: the first token, already streamed
        if decision.mode is Mode.DISAGGREGATED and not self.kv_path.allow():
            decision = Decision(Mode.COLOCATED, None, decision.decode_worker)  # still charged by `first`
        try:
            for _ in range(self.max_attempts * 2):
                if decision.mode is Mode.DISAGGREGATED and prefill is None:
                    prefill_worker = decision.prefill_worker
                    assert prefill_worker is not None
                    try:
                        prefill = await self._prefill(prefill_worker, request, deadline)
                    except (TimeoutError, grpc.aio.AioRpcError) as exc:
                        log.warning("prefill of %s on %s failed: %s", request.request_id, prefill_worker, _describe(exc))
                        if _path_fault(exc):
                            self.kv_path.failed(f"prefill on {prefill_worker}: {_describe(exc)}")
                        # the chosen decode worker computes the prompt itself: neither a lost prefill
                        # worker nor a store that cannot take its KV fails the request
                        excluded.add(prefill_worker)
                        if decision is not first:
                            release(decision)
                        decision = Decision(Mode.COLOCATED, None, decision.decode_worker)
                        continue
                    if decision.charge is not None:
                        decision.charge.prompt_computed()
                        decision.charge.finished(prefill_worker)
                    yield TokenChunk(
                        [prefill.first_token_id],
                        [prefill.first_logprob] if prefill.HasField("first_logprob") else [],
                        prefill.finish_reason,
                        len(request.prompt_token_ids),
                        1,
                        prefill.num_cached_tokens,
                    )
                    if prefill.finish_reason:
                        return
                streamed = False
                try:
                    async for chunk in self._decode(decision.decode_worker, request, prefill, deadline):
                        if streamed_first is not None and not streamed:
                            if not chunk.token_ids or chunk.token_ids[0] != streamed_first:
                                raise WorkerStreamError(f"recomputing {request.request_id} colocated gave another first token")
                            chunk.token_ids, chunk.logprobs = chunk.token_ids[1:], chunk.logprobs[1:]
                        if not streamed and decision.charge is not None:
                            decision.charge.prompt_computed()  # colocated: the decode worker computed the prompt
                        if not streamed and prefill is not None:
                            self.kv_path.succeeded()  # the decode worker has the prompt KV
                        streamed = True
                        if prefill is not None:
                            # decode counts the imported prompt as cached; the realised prefix hit is prefill's
                            chunk.num_cached_tokens = prefill.num_cached_tokens
                        yield chunk
                    return
                except (TimeoutError, grpc.aio.AioRpcError) as exc:
                    log.warning("decode of %s on %s failed: %s", request.request_id, decision.decode_worker, _describe(exc))
                    if streamed:
                        raise WorkerStreamError(
                            f"decode worker {decision.decode_worker} failed mid-stream: {_describe(exc)}"
                        ) from exc
                    if prefill is not None and _path_fault(exc):
                        self.kv_path.failed(f"decode on {decision.decode_worker}: {_describe(exc)}")
                    if prefill is not None and _replayable(request.sampling):
                        # recompute the prompt colocated: on the same worker when it said the KV is missing,
                        # elsewhere when the worker itself may be the problem
                        streamed_first, prefill = prefill.first_token_id, None
                        if _kv_lost(exc):
                            decision = Decision(Mode.COLOCATED, None, decision.decode_worker)  # still charged by `first`
                        else:
                            excluded.add(decision.decode_worker)
                            try:
                                retry = self._retry(redecide, excluded, decision)
                                decision = Decision(Mode.COLOCATED, None, retry.decode_worker, charge=retry.charge)
                            except WorkerStreamError:  # no other decode worker: this one may well be fine
                                decision = Decision(Mode.COLOCATED, None, decision.decode_worker)
                        continue
                    excluded.add(decision.decode_worker)
                    retry = self._retry(redecide, excluded, decision)
                    if prefill is None:
                        decision = retry
                    else:  # the prompt KV is in the store: only the decode worker changes
                        if retry.charge is not None:
                            retry.charge.prompt_computed()
                            retry.charge.finished(retry.prefill_worker or "")
                        decision = Decision(Mode.DISAGGREGATED, decision.prefill_worker, retry.decode_worker,
                                            charge=retry.charge)  # fmt: skip
            raise WorkerStreamError(f"request {request.request_id} failed on every worker tried: {sorted(excluded)}")
        finally:
            if decision is not first:
                release(decision)
            release(first)

    def _retry(self, redecide: Redecide, excluded: set[str], failed: Decision) -> Decision:
        release(failed)
        if len(excluded) >= self.max_attempts:
            raise WorkerStreamError(f"gave up after failures on {sorted(excluded)}")
        try:
            return redecide(frozenset(excluded))
        except Exception as exc:  # NoWorkersAvailable, AdmissionRejected
            raise WorkerStreamError(f"no worker left to retry on: {exc}") from exc

    async def _prefill(self, address: str, request: GenerationRequest, deadline: float) -> worker_pb2.PrefillResponse:
        stub = self.pool.stub(address, worker_pb2_grpc.PrefillServiceStub)
        message = worker_pb2.PrefillRequest(
            request_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids,
            sampling=request.sampling,
            cache_salt=request.cache_salt,
        )
        start = time.monotonic()
        call = stub.Prefill(message, timeout=min(self.prefill_timeout_s, _remaining(deadline)))
        try:
            response = await self._watched(call, address, self.prefill_timeout_s)
        except (asyncio.CancelledError, WorkerStalled):
            call.cancel()
            await self.abort(address, request.request_id, prefill=True)
            raise
        worker = self.pool.workers.get(address)
        if worker is not None:
            worker.record_prefill(response.num_computed_tokens, time.monotonic() - start)
        return response

    async def _decode(
        self, address: str, request: GenerationRequest, prefill: worker_pb2.PrefillResponse | None, deadline: float
    ) -> AsyncIterator[TokenChunk]:
        stub = self.pool.stub(address, worker_pb2_grpc.DecodeServiceStub)
        message = worker_pb2.GenerateRequest(
            request_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids,
            sampling=request.sampling,
            cache_salt=request.cache_salt,
        )
        if prefill is not None:
            message.kv_handle.CopyFrom(prefill.kv_handle)
            message.first_token_id = prefill.first_token_id
        if request.unary and address not in self.stream_only:
            whole = await self._decode_unary(stub, address, message, deadline)
            if whole is not None:
                yield whole
                return
        call = stub.Generate(message, timeout=_remaining(deadline))
        finished = False
        try:
            while True:
                chunk = await self._watched(call.read(), address, self.chunk_timeout_s)
                if chunk is grpc.aio.EOF:
                    if not finished:
                        raise WorkerStreamError(f"decode worker {address} ended the stream without a finish reason")
                    return
                finished = bool(chunk.finish_reason)
                yield TokenChunk(
                    list(chunk.token_ids),
                    list(chunk.logprobs),
                    chunk.finish_reason,
                    chunk.prompt_tokens,
                    chunk.completion_tokens,
                    chunk.num_cached_tokens,
                )
        finally:
            if not finished:
                call.cancel()
                await self.abort(address, request.request_id, prefill=False)

    async def _decode_unary(
        self, stub: worker_pb2_grpc.DecodeServiceStub, address: str, message: worker_pb2.GenerateRequest, deadline: float
    ) -> TokenChunk | None:
        """The whole generation in one reply; None from a worker without GenerateUnary (an older
        version: it gets streams from now on). Failures raise as a stream's would, before its first token."""
        call = stub.GenerateUnary(message, timeout=_remaining(deadline))
        try:
            reply = await self._watched(call, address, self.chunk_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # nothing ran there
                log.warning("decode worker %s has no GenerateUnary: streaming its requests", address)
                self.stream_only.add(address)
                return None
            await self.abort(address, message.request_id, prefill=False)
            raise
        except BaseException:  # stalled, or the client left: free the worker's slots now
            call.cancel()
            await self.abort(address, message.request_id, prefill=False)
            raise
        if not reply.finish_reason:
            raise WorkerStreamError(f"decode worker {address} answered without a finish reason")
        return TokenChunk(
            list(reply.token_ids),
            list(reply.logprobs),
            reply.finish_reason,
            reply.prompt_tokens,
            reply.completion_tokens,
            reply.num_cached_tokens,
        )

    async def _watched(self, awaitable: Awaitable[T], address: str, silence_s: float) -> T:
        """``awaitable``'s result, or WorkerStalled once the worker was silent too long.

        Too long: ``silence_s`` in any case, or ``stall_timeout_s`` while the pool's health
        checks fail for the worker (a stopped or wedged process answers nothing, not even
        health; a slow but live one keeps passing them and keeps its requests).
        """
        # One timer re-armed every STALL_POLL_S that cancels this task (via asyncio.timeout) when the
        # worker is silent too long: no task and no asyncio.wait per chunk read.
        loop = asyncio.get_running_loop()
        start = loop.time()
        stalled = ""
        timer: asyncio.TimerHandle  # armed below, re-armed by check()

        def check() -> None:
            nonlocal stalled, timer
            silent = loop.time() - start
            if silent >= silence_s:
                stalled = f"worker {address} sent nothing for {silent:.1f}s"
            elif silent >= self.stall_timeout_s and not self._responsive(address):
                stalled = f"worker {address} stalled: silent for {silent:.1f}s and failing its health checks"
            else:
                timer = loop.call_later(STALL_POLL_S, check)
                return
            limit.reschedule(loop.time())

        timer = loop.call_later(STALL_POLL_S, check)
        try:
            async with asyncio.timeout(None) as limit:
                return await awaitable
        except TimeoutError:
            if stalled:
                raise WorkerStalled(stalled) from None
            raise
        finally:
            timer.cancel()

    def _responsive(self, address: str) -> bool:
        worker = self.pool.workers.get(address)
        return worker is not None and worker.healthy

    async def abort(self, address: str, request_id: str, prefill: bool) -> None:
        """Best effort: the worker frees the request's slots now rather than at its deadline."""
        stub_cls = worker_pb2_grpc.PrefillServiceStub if prefill else worker_pb2_grpc.DecodeServiceStub
        try:
            await stub_cls(self.pool.channel(address)).Abort(worker_pb2.AbortRequest(request_id=request_id), timeout=1.0)
        except grpc.aio.AioRpcError:
            pass


def release(decision: Decision) -> None:
    """Release what the scheduler charged for ``decision`` (idempotent)."""
    if decision.charge is not None:
        decision.charge.release()


def _kv_lost(exc: BaseException) -> bool:
    """The decode worker could not read the prompt KV from the store (evicted, or its write failed)."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.NOT_FOUND


def _path_fault(exc: BaseException) -> bool:
    """A failure of the serving path (worker, store, transfer), not one the request itself caused.

    Only these open the KV-path breaker: a client must not be able to switch disaggregation off.
    """
    client_caused = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.CANCELLED)
    return not (isinstance(exc, grpc.aio.AioRpcError) and exc.code() in client_caused)


def _replayable(sampling: worker_pb2.SamplingParams) -> bool:
    """Recomputing the prompt gives the same first token: greedy, or seeded (noise from seed and position only)."""
    return sampling.temperature == 0 or sampling.HasField("seed")


def _remaining(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
