"""Prefill requests in the core: reuse store blocks, stream KV out as chunks finish.

start():        local prefix hit -> ask the store for the following blocks (thread) ->
                import them (``import_request``, rest recomputed) or a plain prefill.
on_progress():  after every chunk, export the newly final full blocks (and, when the
                prompt is done, the partial tail block) and put them on the thread pool,
                so the store write of chunk i overlaps the compute of chunk i+1.
on_output():    the first token is sampled: answer "prefilled" at once, with a handle that
                says whether blocks are still on their way to the store
                (``blocks_pending``; the decode side waits for them). The store write thus
                leaves the TTFT path: only the compute of the prompt stays on it.
finish_ready(): once every put of an answered request has finished, ``release`` its
                engine blocks (never earlier, whatever happened to the RPC). A put that
                fails after the answer is logged; the decode side's bounded wait turns it
                into NOT_FOUND and the router retries.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from engine.errors import EngineError, PromptTooLong
from engine.llm_engine import LLMEngine
from engine.outputs import PrefillProgress, RequestOutput
from engine.sampling_params import SamplingParams
from engine.server.kv_transfer import KVTransfer, tail_key
from engine.server.protocol import ErrorKind, KVHandleRecord, PrefillResult, record
from kvstore.block_key import BlockKey, block_keys

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PrefillJob:
    request_id: str
    prompt: list[int]
    keys: list[BlockKey]  # full blocks
    tail: BlockKey  # b"" when the prompt fills whole blocks
    in_store: set[int] = field(default_factory=set)  # block indexes the store already holds
    exported: int = 0  # full blocks handed to the store so far
    puts: list[Future] = field(default_factory=list)
    output: RequestOutput | None = None  # set when the first token was sampled and the request answered
    fetching: bool = True


class PrefillJobs:
    def __init__(self, engine: LLMEngine, transfer: KVTransfer, done: queue.Queue, send: Callable[..., None]) -> None:
        self.engine = engine
        self.transfer = transfer
        self.done = done
        self.send = send
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
        job = PrefillJob(rid, prompt, keys, tail)
        self.jobs[rid] = job
        local = self.engine.cached_prefix_blocks(prompt, salt)
        # blocks the prompt's last token falls in are recomputed anyway (its logits are needed)
        usable = (len(prompt) - 1) // self.block_size

        def lookup() -> None:
            try:
                found = self.transfer.client.blocks_exist(self.transfer.layout, keys)
                job.in_store = {i for i, ok in enumerate(found) if ok}
                n = 0
                while local + n < usable and (local + n) in job.in_store:
                    n += 1
                rows = self.transfer.fetch_prefix(keys[local : local + n])
            except Exception as exc:  # noqa: BLE001 - the store is optional for correctness
                rows, job.in_store = self.transfer.empty_rows(0), set()
                del exc
            self.done.put(lambda: self._admit(job, sp, salt, local, rows))

        self.transfer.submit(lookup)

    def _validate(self, rid: str, prompt: list[int], sp: SamplingParams) -> None:
        if rid in self.jobs or rid in self.engine.requests:
            raise ValueError(f"request id {rid!r} is already in use; ids must be unique")
        sp.validate(self.engine.runner.vocab_size)
        if not prompt:
            raise ValueError("prompt is empty; pass at least one token")
        if min(prompt) < 0 or max(prompt) >= self.engine.runner.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.engine.runner.vocab_size}) for this model")
        if len(prompt) >= self.engine.max_model_len:
            raise PromptTooLong(f"prompt has {len(prompt)} tokens but the context holds {self.engine.max_model_len} "
                                "(including at least one new token); shorten the prompt")

    def _admit(self, job: PrefillJob, sp: SamplingParams, salt: str, local: int, rows) -> None:  # type: ignore[no-untyped-def]
        if self.jobs.get(job.request_id) is not job:
            return  # aborted during the lookup
        job.fetching = False
        rid, n = job.request_id, rows.shape[0]
        try:
            if n:
                self.engine.import_request(rid, job.prompt, sp, rows, (local + n) * self.block_size,
                                           start_block=local, cache_salt=salt, prefill_only=True)
            else:
                self.engine.add_request(rid, job.prompt, sp, prefill_only=True, cache_salt=salt)
        except (EngineError, ValueError) as exc:
            del self.jobs[rid]
            self.send("error", rid, ErrorKind.INVALID_ARGUMENT.value, str(exc))

    def on_progress(self, p: PrefillProgress) -> None:
        job = self.jobs.get(p.request_id)
        if job is None:
            return
        full = p.num_computed_tokens // self.block_size
        todo = [i for i in range(job.exported, full) if i not in job.in_store]
        job.exported = max(job.exported, full)
        if todo:
            rows = self.engine.export_blocks(job.request_id, todo[0], todo[-1] + 1)  # [n, L, 2, B, Hkv, D]
            keep = [i - todo[0] for i in todo]
            host, ready = self.transfer.stage(rows[keep])
            job.puts.append(self.transfer.submit(self.transfer.put, [job.keys[i] for i in todo], host, ready))
        if p.done and job.tail:
            host, ready = self.transfer.stage(self.engine.export_blocks(job.request_id, full, full + 1))
            job.puts.append(self.transfer.submit(self.transfer.put, [job.tail], host, ready))

    def on_output(self, out: RequestOutput) -> None:
        job = self.jobs[out.request_id]
        job.output = out
        # every put of the prompt was submitted by on_progress (p.done) before this output
        errors = _errors(job)
        if errors:  # already failed: the handle would be useless; the blocks are released once all puts end
            self.send("error", out.request_id, ErrorKind.UNAVAILABLE.value, f"writing the KV blocks to the store failed: {errors[0]}")
        else:
            self.send("prefilled", out.request_id, record(self._result(job, pending=not all(f.done() for f in job.puts))))
        for fut in job.puts:
            fut.add_done_callback(lambda _f: self.done.put(lambda: None))  # wake the loop

    def finish_ready(self) -> None:
        for rid, job in list(self.jobs.items()):
            if job.output is None or not all(f.done() for f in job.puts):
                continue
            del self.jobs[rid]
            self.engine.release(rid)
            errors = _errors(job)
            if errors:
                log.warning("request %s: writing its KV blocks to the store failed after the answer: %s", rid, errors[0])

    def drain(self, timeout_s: float = 10.0) -> None:
        """Shutdown: let the puts of answered requests finish (bounded), so their decode finds the blocks."""
        deadline = time.monotonic() + timeout_s
        for job in list(self.jobs.values()):
            for fut in job.puts:
                try:
                    fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - a failed or unfinished put: the decode side times out
                    pass

    def _result(self, job: PrefillJob, pending: bool) -> PrefillResult:
        out = job.output
        lp = out.new_logprobs[0] if out.new_logprobs else None
        handle = KVHandleRecord(
            self.transfer.layout.model_fingerprint, self.transfer.layout.dtype, self.block_size,
            self.transfer.layout.tp_size, job.keys, job.tail, len(job.prompt), [self.transfer.address],
            blocks_pending=pending,
        )
        return PrefillResult(
            out.new_token_ids[0], [lp.token_id, lp.logprob, [list(t) for t in lp.top]] if lp else None, handle,
            out.num_cached_tokens, len(job.prompt) - out.num_cached_tokens, out.finish_reason,
        )

    def abort(self, rid: str) -> bool:
        """False when the request was already answered: its blocks stay until its puts finish."""
        job = self.jobs.get(rid)
        if job is not None and job.output is not None:
            return False
        self.jobs.pop(rid, None)
        return True


def _errors(job: PrefillJob) -> list[BaseException]:
    return [e for f in job.puts if f.done() and not f.cancelled() and (e := f.exception()) is not None]
