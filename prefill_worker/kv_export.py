"""Where KV leaves the prefill worker: prefill requests in the engine core, handed to the connectors.

start():        local prefix hit -> ask the store for the following blocks (thread) ->
                import them (``import_request``, rest recomputed) or a plain prefill.
on_progress():  after every chunk the newly final full blocks go to every connector's ``save``
                (the store writes them in the background while the next chunk computes; the
                direct transport leaves them in place for the reader to pull).
on_output():    the first token is sampled: answer "prefilled" at once with a KVHandle that
                every connector filled in (contracts/kv_handle.py). Moving KV stays off the TTFT
                path: only the compute of the prompt is on it.
finish_ready(): once no connector holds an answered request (its reader released it or the
                lease ended; its store writes finished), ``release`` its engine blocks —
                never earlier, whatever happened to the RPC.
"""

from __future__ import annotations

import logging
import queue
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from contracts.core_messages import ErrorKind, FromCore, Prefilled, PrefillResult, RequestError
from contracts.kv_handle import KVHandle
from contracts.sampling import SamplingParams
from engine.errors import EngineError, PromptTooLong
from engine.llm_engine import LLMEngine
from engine.outputs import PrefillProgress, RequestOutput
from kv_transfer.connector import ExportJob, KVConnector
from kv_transfer.store import StoreConnector, tail_key
from kvstore.block_key import KVLayout, block_keys

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PrefillJob:
    job: ExportJob
    output: RequestOutput | None = None  # set when the first token was sampled and the request answered
    fetching: bool = True


class PrefillJobs:
    def __init__(
        self,
        engine: LLMEngine,
        connectors: list[KVConnector],
        layout: KVLayout,
        worker_id: str,
        epoch: str,
        done: queue.Queue,
        send: Callable[[FromCore], None],
    ) -> None:
        self.engine, self.connectors, self.layout = engine, connectors, layout
        self.store = next((c for c in connectors if isinstance(c, StoreConnector)), None)
        self.worker_id, self.epoch = worker_id, epoch
        self.done, self.send = done, send
        self.block_size = engine.config.block_size
        self.jobs: dict[str, PrefillJob] = {}

    def owns(self, request_id: str) -> bool:
        return request_id in self.jobs

    def busy(self) -> bool:
        return bool(self.jobs)

    def num_fetching(self) -> int:
        return sum(1 for j in self.jobs.values() if j.fetching)

    def start(self, rid: str, prompt: list[int], sp: SamplingParams, salt: str) -> None:
        self._validate(rid, prompt, sp)
        keys = block_keys(prompt, self.engine.fingerprint, self.block_size, salt)
        rem = len(prompt) % self.block_size
        tail = tail_key(keys[-1] if keys else None, self.engine.fingerprint, salt, prompt[-rem:]) if rem else b""
        pj = PrefillJob(ExportJob(rid, prompt, keys, tail, uuid.uuid4().hex))
        self.jobs[rid] = pj
        local = self.engine.cached_prefix_blocks(prompt, salt)
        if self.store is None:
            pj.fetching = False
            self._admit(pj, sp, salt, local, None)
            return
        # blocks the prompt's last token falls in are recomputed anyway (its logits are needed)
        usable = (len(prompt) - 1) // self.block_size
        store, job = self.store, pj.job

        def lookup() -> None:
            try:
                found = store.client.blocks_exist(store.layout, keys)
                job.in_store = {i for i, ok in enumerate(found) if ok}
                n = 0
                while local + n < usable and (local + n) in job.in_store:
                    n += 1
                rows = store.fetch(keys[local : local + n]) if n else None
            except Exception:  # the store is a cache: on any trouble, recompute
                rows, job.in_store = None, set()
            self.done.put(lambda: self._admit(pj, sp, salt, local, rows))

        store.submit(lookup)

    def _validate(self, rid: str, prompt: list[int], sp: SamplingParams) -> None:
        if rid in self.jobs or rid in self.engine.requests:
            raise ValueError(f"request id {rid!r} is already in use; ids must be unique")
        sp.validate(self.engine.runner.vocab_size)
        if not prompt:
            raise ValueError("prompt is empty; pass at least one token")
        if min(prompt) < 0 or max(prompt) >= self.engine.runner.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.engine.runner.vocab_size}) for this model")
        if len(prompt) >= self.engine.max_model_len:
            raise PromptTooLong(
                f"prompt has {len(prompt)} tokens but the context holds {self.engine.max_model_len} "
                "(including at least one new token); shorten the prompt"
            )

    def _admit(self, pj: PrefillJob, sp: SamplingParams, salt: str, local: int, rows) -> None:
        rid = pj.job.request_id
        if self.jobs.get(rid) is not pj:
            return  # aborted during the lookup
        pj.fetching = False
        try:
            if rows is not None and rows.shape[0]:
                self.engine.import_request(
                    rid,
                    pj.job.prompt,
                    sp,
                    rows,
                    (local + rows.shape[0]) * self.block_size,
                    start_block=local,
                    cache_salt=salt,
                    prefill_only=True,
                )
            else:
                self.engine.add_request(rid, pj.job.prompt, sp, prefill_only=True, cache_salt=salt)
        except (EngineError, ValueError) as exc:
            del self.jobs[rid]
            self.send(RequestError(rid, ErrorKind.INVALID_ARGUMENT, str(exc)))

    def on_progress(self, p: PrefillProgress) -> None:
        pj = self.jobs.get(p.request_id)
        if pj is None:
            return
        job = pj.job
        full = p.num_computed_tokens // self.block_size
        blocks = list(range(job.saved, full))
        job.saved = max(job.saved, full)
        for c in self.connectors:
            if blocks:
                c.save(job, blocks)
            if p.done:
                c.finish(job)

    def on_output(self, out: RequestOutput) -> None:
        pj = self.jobs[out.request_id]
        pj.output = out
        errors = self.store.failed(pj.job) if self.store is not None else []
        handle = self._handle(pj.job)
        if errors and handle.direct is None and handle.peer is None:  # the store was the only way: the handle is useless
            self.send(
                RequestError(out.request_id, ErrorKind.UNAVAILABLE, f"writing the KV blocks to the store failed: {errors[0]}")
            )
        else:
            self.send(Prefilled(out.request_id, self._result(out, len(pj.job.prompt), handle)))
        if self.store is not None:
            self.store.on_written(pj.job, lambda: self.done.put(lambda: None))  # wake the loop

    def finish_ready(self) -> None:
        for rid, pj in list(self.jobs.items()):
            if pj.output is None or any(c.holds(pj.job) for c in self.connectors):
                continue
            del self.jobs[rid]
            self.engine.release(rid)
            errors = self.store.failed(pj.job) if self.store is not None else []
            if errors:
                log.warning("request %s: writing its KV blocks to the store failed after the answer: %s", rid, errors[0])

    def drain(self, timeout_s: float = 10.0) -> None:
        """Shutdown: let the store writes of answered requests finish (bounded), so their decode finds the blocks."""
        if self.store is not None:
            self.store.drain([pj.job for pj in self.jobs.values()], timeout_s)

    def _handle(self, job: ExportJob) -> KVHandle:
        handle = KVHandle(
            self.layout.model_fingerprint,
            self.layout.dtype,
            self.block_size,
            self.layout.tp_size,
            job.keys,
            job.tail,
            len(job.prompt),
            source_worker=self.worker_id,
            transfer_id=job.transfer_id,
            epoch=self.epoch,
        )
        for c in self.connectors:
            c.offer(job, handle)
        return handle

    @staticmethod
    def _result(out: RequestOutput, prompt_len: int, handle: KVHandle) -> PrefillResult:
        return PrefillResult(
            out.new_token_ids[0],
            out.new_logprobs[0] if out.new_logprobs else None,
            handle,
            out.num_cached_tokens,
            prompt_len - out.num_cached_tokens,
            out.finish_reason,
        )

    def abort(self, rid: str) -> bool:
        """False when the request was already answered: its blocks stay until no connector holds them."""
        pj = self.jobs.get(rid)
        if pj is not None and pj.output is not None:
            return False
        self.jobs.pop(rid, None)
        return True
