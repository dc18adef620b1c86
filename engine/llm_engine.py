"""LLMEngine: requests in, incremental outputs out; one ``step()`` = schedule -> run -> sample -> emit.

Worker hooks:
  * ``add_request(..., prefill_only=True)``: stop after the first token, keep the KV
    blocks until ``release(request_id)`` so they can be exported.
  * ``export_blocks`` / ``import_request``: the prefill -> decode KV contract.
  * ``on_prefill_progress(PrefillProgress)``: called after every prefill chunk.
  * ``on_kv_events(list[KVEvent])``: called after a step that stored/removed cached
    blocks (else drain them with ``take_kv_events()``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from contracts.core_messages import EngineLoad, TokenLogprob
from contracts.kv_events import KVEvent
from contracts.sampling import SamplingParams
from engine.block_manager import BlockManager
from engine.checkpoint import fingerprint as checkpoint_fingerprint
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer, StopChecker
from engine.errors import OutOfKVBlocks, PromptTooLong, UnknownRequest
from engine.executor import make_runner
from engine.kv_source import KVRows, KVSource
from engine.model_runner import ModelRunner
from engine.outputs import PrefillProgress, RequestOutput
from engine.sampler import Sampler, SamplerOutput
from engine.scheduler import Scheduler
from engine.sequence import Sequence, SequenceStatus
from engine.structured_output import GrammarCompiler, GrammarPreparer, GrammarState
from engine.token_readback import PendingTokens, TokenReadback
from engine.tokenizer_files import eos_token_ids, load_tokenizer
from kvstore.block_key import block_keys

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    stop: StopChecker


@dataclass(slots=True)
class _Step:
    """A step's samples on their way to the host (emitted now, or by the next step when it runs ahead)."""

    sampled: list[Sequence]
    out: SamplerOutput
    tokens: PendingTokens


class LLMEngine:
    def __init__(
        self,
        config: EngineConfig,
        on_kv_events: Callable[[list[KVEvent]], None] | None = None,
        on_prefill_progress: Callable[[PrefillProgress], None] | None = None,
    ) -> None:
        self.config = config
        model_dir = Path(config.model)
        self.fingerprint = checkpoint_fingerprint(model_dir, config.load_format)
        self.tokenizer = load_tokenizer(model_dir)
        self.eos_token_ids = eos_token_ids(model_dir, self.tokenizer)
        self.runner = make_runner(config, self.eos_token_ids)  # ModelRunner, or rank 0 of a TP/EP group
        self.max_model_len = config.max_model_len or self.runner.hf_config.max_position_embeddings
        if self.runner.kv.num_blocks == 0:
            raise OutOfKVBlocks("the KV budget holds no block; raise kv_cache_bytes / gpu_memory_utilization")
        self.blocks = BlockManager(
            self.runner.kv.num_blocks, config.block_size, self.fingerprint, config.enable_prefix_caching, config.kv_events_medium
        )
        self.scheduler = Scheduler(config, self.blocks)
        self.requests: dict[str, _Request] = {}
        self.on_kv_events = on_kv_events
        self.on_prefill_progress = on_prefill_progress
        self._ready: list[RequestOutput] = []  # outputs decided outside a step (e.g. import of a final token)
        device = getattr(self.runner, "device", torch.device("cpu"))
        self._readback = TokenReadback(device, config.max_num_seqs)
        self._inflight: _Step | None = None  # launched decode step whose tokens are not emitted yet
        self._land_stream: torch.cuda.Stream | None = None  # land_import's copies on a GPU
        if config.land_imports and isinstance(self.runner, ModelRunner) and device.type == "cuda":
            # high priority: its copies take SMs as the step in flight frees them
            self._land_stream = torch.cuda.Stream(device, priority=-1)
            self.blocks.fence_mark = self._fence_mark
        # guided requests wait here, not in the scheduler, until their grammar is compiled
        self.grammars = GrammarPreparer(lambda: GrammarCompiler(self.tokenizer, self.runner.vocab_size, self.eos_token_ids))

    def grammar_state(self, params: SamplingParams) -> GrammarState:
        """A fresh matcher for a guided request, compiled now (InvalidSamplingParams if it cannot be)."""
        return self.grammars.state_now(params.guided_kind, params.guided_spec)

    # ---- requests ----------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        *,
        prefill_only: bool = False,
        cache_salt: str = "",
    ) -> None:
        seq = self._new_sequence(request_id, prompt_token_ids, params, prefill_only, cache_salt)
        self._schedule_when_ready(seq)

    def _schedule_when_ready(self, seq: Sequence) -> None:
        if seq.params.is_guided:
            self.grammars.submit(seq.request_id, seq.params.guided_kind, seq.params.guided_spec)
        else:
            self.scheduler.add(seq)

    def import_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None,
        kv: torch.Tensor | KVSource,  # rows [n, L, 2, B, Hkv, D] of blocks start_block .. start_block + n, or a peer's blocks
        num_tokens: int,
        first_token_id: int | None = None,
        *,
        start_block: int = 0,
        cache_salt: str = "",
        prefill_only: bool = False,
        evict_first: bool = False,
    ) -> None:
        """Add a request whose first ``num_tokens`` prompt tokens' KV comes from ``kv``.

        Rows before ``start_block`` must be in the local prefix cache (see
        ``cached_prefix_blocks``); if they are gone by admission time the request
        recomputes instead. ``prefill_only`` as in ``add_request`` (a prefill worker that
        imported a cached prefix from the store). ``evict_first``: once the request ends, the
        blocks the import copied in are the first cached blocks to be evicted (a decode worker:
        the prefill worker that sent them keeps its own). ``first_token_id`` is the token the prefill side sampled;
        decoding continues after it.
        """
        if not 0 < num_tokens <= len(prompt_token_ids):
            raise ValueError(f"num_tokens={num_tokens} must be in 1..{len(prompt_token_ids)} (the prompt length)")
        source = KVRows(kv) if isinstance(kv, torch.Tensor) else kv
        expected_rows = -(-num_tokens // self.config.block_size) - start_block
        if source.num_rows != expected_rows:
            raise ValueError(f"kv has {source.num_rows} rows; {num_tokens} tokens from block {start_block} need {expected_rows}")
        seq = self._new_sequence(request_id, prompt_token_ids, params, prefill_only, cache_salt)
        seq.pending_kv, seq.pending_kv_tokens = source, num_tokens
        seq.pending_kv_start_block = start_block
        seq.imports_evict_first = evict_first
        if first_token_id is not None:
            seq.token_ids.append(first_token_id)
            req = self.requests[request_id]
            req.detokenizer.add([first_token_id])
            reason, _ = req.stop.check(seq.output_token_ids, req.detokenizer.text)
            if reason is not None:
                self._finish(req, reason)
                self._ready.append(self._output(req, [], None, 0))
                return
        # a guided request replays the prefill's first token into its grammar once compiled
        self._schedule_when_ready(seq)

    def _new_sequence(
        self, request_id: str, prompt: list[int], params: SamplingParams | None, prefill_only: bool, cache_salt: str
    ) -> Sequence:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use; ids must be unique")
        params = params if params is not None else SamplingParams()
        params.validate(self.runner.vocab_size)
        if not prompt:
            raise ValueError("prompt is empty; pass at least one token")
        if min(prompt) < 0 or max(prompt) >= self.runner.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.runner.vocab_size}) for this model")
        if len(prompt) >= self.max_model_len:
            raise PromptTooLong(
                f"prompt has {len(prompt)} tokens but the context holds {self.max_model_len} "
                "(including at least one new token); shorten the prompt"
            )
        # a request must be able to finish alone, or preemption could never make room for it
        longest = min(len(prompt) + params.max_tokens, self.max_model_len)
        if -(-longest // self.config.block_size) > self.blocks.num_blocks:
            raise OutOfKVBlocks(
                f"prompt of {len(prompt)} tokens plus max_tokens={params.max_tokens} needs more than the "
                f"{self.blocks.num_blocks} KV blocks of the pool; raise kv_cache_bytes / num_kv_blocks, "
                "or lower max_tokens or the prompt length"
            )
        seq = Sequence(request_id, list(prompt), len(prompt), params, cache_salt, prefill_only)
        self.requests[request_id] = _Request(
            seq, IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids), StopChecker(params, self.eos_token_ids)
        )
        return seq

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its blocks; False if unknown or already finished."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        self.grammars.discard(request_id)
        self._order_after_landing(req.seq)  # its blocks may still be receiving a copy
        self.scheduler.finish(req.seq)
        req.seq.status = SequenceStatus.FINISHED
        req.seq.finish_reason = "abort"
        return True

    def release(self, request_id: str) -> None:
        """Free the blocks a finished prefill_only request kept for export."""
        req = self.requests.get(request_id)
        if req is None or req.seq.status is not SequenceStatus.HELD:
            raise UnknownRequest(f"no prefill_only request {request_id!r} is holding blocks; release each id once")
        self.blocks.release(req.seq)
        req.seq.status = SequenceStatus.FINISHED
        del self.requests[request_id]

    def land_import(self, request_id: str) -> bool:
        """Copy a waiting import's KV into blocks of its own now, not in the step that admits it.

        A decode worker calls it when a direct import arrives. On a GPU the copy runs on a stream
        of its own, beside the step in flight, so the KV is in place before that step ends (in
        the admitting step it could start only after it); the admitting step waits for the
        copy's end event. It takes only blocks no queued work can still touch (fences, in
        engine/block_manager.py) and leaves free at least a block per running request. False,
        with nothing changed, where it cannot: the request is not waiting, its source is not
        a device copy, the cached head it relies on is gone or blocks are short. The admitting
        step then copies as before.
        """
        req = self.requests.get(request_id)
        if req is None or not self.config.land_imports or not isinstance(self.runner, ModelRunner):
            return False
        seq = req.seq
        source = seq.pending_kv
        if (
            source is None
            or not getattr(source, "lands_early", False)
            or seq.status is not SequenceStatus.WAITING
            or seq.block_table
            or seq.landed
            or not any(s is seq for s in self.scheduler.waiting)  # not a guided one compiling its grammar
        ):
            return False
        block_size = self.config.block_size
        hit = self.blocks.match_prefix(seq, seq.num_tokens - 1)
        imported = min(seq.pending_kv_tokens, seq.num_tokens - 1)
        need = self.blocks.blocks_needed(seq, imported + 1)
        headroom = len(self.scheduler.running)
        if (
            hit // block_size < seq.pending_kv_start_block
            or imported <= hit
            or not source.usable()
            or need + headroom > self.blocks.num_unfenced_free()
        ):
            self.blocks.release(seq)  # only prefix hits: no work touches them
            return False
        self.blocks.allocate(seq, imported, unfenced=True)
        seq.num_computed_tokens = imported
        stream = self._land_stream
        try:
            if stream is not None:
                with torch.cuda.stream(stream):
                    self._copy_pending_kv(seq)
                    fence = torch.cuda.Event()
                    fence.record(stream)
                seq.landed_fence = fence
            else:
                self._copy_pending_kv(seq)
        except Exception:
            if stream is not None:
                torch.cuda.current_stream().wait_stream(stream)  # whatever of the copy was queued runs first
            self.blocks.release(seq)
            seq.num_computed_tokens = 0
            raise
        seq.first_scheduled, seq.num_cached_tokens = True, imported
        self.blocks.record_query(seq.num_prompt_tokens, hit)
        seq.pending_kv, seq.landed = None, True
        return True

    def _fence_mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record()  # the engine's stream: everything queued so far
        return event

    def _order_after_landing(self, seq: Sequence) -> None:
        """Before a landed request's blocks go back: the engine's stream waits for its copy."""
        if seq.landed_fence is not None:
            torch.cuda.current_stream().wait_event(seq.landed_fence)
            seq.landed_fence = None

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or bool(self._ready) or self._inflight is not None or len(self.grammars) > 0

    # ---- KV transfer ----------------------------------------------------------------------------
    def export_blocks(self, request_id: str, start_block: int = 0, end_block: int | None = None) -> torch.Tensor:
        """KV rows [n, L, 2, B, Hkv, D] of a request's computed blocks (the last may be partial).

        Rows always hold all KV heads (gathered from the TP ranks), so any TP size can import them.
        """
        req = self.requests.get(request_id)
        if req is None or req.seq.status not in (SequenceStatus.RUNNING, SequenceStatus.HELD):
            raise UnknownRequest(f"request {request_id!r} holds no KV blocks (unknown, waiting or finished)")
        seq = req.seq
        computed_blocks = -(-seq.num_computed_tokens // self.config.block_size)
        end = computed_blocks if end_block is None else end_block
        if not 0 <= start_block <= end <= computed_blocks:
            raise ValueError(f"block range [{start_block}, {end}) is outside the {computed_blocks} computed blocks")
        return self.runner.export_kv(seq.block_table[start_block:end])

    def block_ids(self, request_id: str, num_tokens: int) -> list[int]:
        """The engine blocks holding the KV of a request's first ``num_tokens`` tokens, in order
        (a peer on the same host reads them straight out of this engine's pool)."""
        req = self.requests.get(request_id)
        if req is None or req.seq.status not in (SequenceStatus.RUNNING, SequenceStatus.HELD):
            raise UnknownRequest(f"request {request_id!r} holds no KV blocks (unknown, waiting or finished)")
        return list(req.seq.block_table[: -(-num_tokens // self.config.block_size)])

    def cached_prefix_blocks(self, prompt_token_ids: list[int], cache_salt: str = "") -> int:
        """How many leading full blocks of a prompt are in the local prefix cache now."""
        n = 0
        for key in block_keys(prompt_token_ids, self.fingerprint, self.config.block_size, cache_salt):
            if key not in self.blocks.cached:
                break
            n += 1
        return n

    def request_block_keys(self, request_id: str) -> list[bytes]:
        """Keys of the request's full computed blocks (same as kvstore.block_key.block_keys)."""
        seq = self.requests[request_id].seq
        num_full = seq.num_computed_tokens // self.config.block_size
        return block_keys(
            seq.token_ids[: num_full * self.config.block_size], self.fingerprint, self.config.block_size, seq.cache_salt
        )

    def take_kv_events(self) -> list[KVEvent]:
        return self.blocks.take_events()

    # ---- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one step; return the outputs emitted by it.

        Greedy decode over CUDA graphs runs one step ahead (``async_decode``): a step launches
        the next decode step from its samples still on the device, and returns its tokens from
        the following ``step()`` call, while the GPU computes that next step. Any other step
        (admissions, prefill, sampling that needs the host) first emits the step in flight.
        """
        self._admit_compiled()
        outputs, self._ready = self._ready, []
        if self._inflight is not None:
            plan = self._plan_ahead(self._inflight.sampled)
            if plan is not None:
                outputs += self._step_ahead(plan)
                self._publish_events()
                return outputs
            outputs += self._emit(self._take_inflight())
        sched = self.scheduler.schedule()
        for seq in sched.imports:
            self._scatter_import(seq)
        if sched.plan:
            sampled, sample_out = self.runner.execute(sched.plan)
            self._advance(sched.plan)
            if sample_out is not None:
                step = _Step(sampled, sample_out, self._readback.start(sample_out.token_ids))
                if sample_out.logprobs is None and self._plan_ahead(sampled) is not None:
                    self._inflight = step  # the next step() launches its successor first, then emits it
                else:
                    outputs += self._emit(step)
        self._publish_events()
        return outputs

    def _plan_ahead(self, last: list[Sequence]) -> dict[Sequence, int] | None:
        """The next decode plan, if it can launch before ``last``'s samples reach the host; else None.

        It can when every running sequence was sampled by ``last`` (same order), none may
        finish by length on that token, nothing waits for admission, the argmax is the whole
        sampling answer and a decode graph fits. A sequence that stops on EOS or a stop
        string finishes when its token is emitted; what the step ahead computed for it is dropped.
        """
        running = self.scheduler.running
        if (
            not self.config.async_decode
            or self.scheduler.waiting
            or len(running) != len(last)
            or any(a is not b for a, b in zip(running, last))
        ):
            return None
        outputs = [seq.num_tokens - seq.num_prompt_tokens + 1 for seq in running]  # once the token in flight lands
        for seq, n in zip(running, outputs):
            if seq.prefill_only or n >= seq.params.max_tokens or seq.num_tokens + 1 >= self.max_model_len:
                return None
        if not Sampler.argmax_suffices([seq.params for seq in running], outputs):
            return None
        plan = {seq: 1 for seq in running}
        can_run_ahead = getattr(self.runner, "can_run_ahead", None)
        if can_run_ahead is None or not can_run_ahead(plan):
            return None
        if sum(self.blocks.blocks_needed(seq, seq.num_computed_tokens + 1) for seq in running) > self.blocks.num_free:
            return None
        return plan

    def _step_ahead(self, plan: dict[Sequence, int]) -> list[RequestOutput]:
        """Launch ``plan`` on the in-flight step's device samples, then emit that step while this one runs."""
        last = self._take_inflight()
        for seq in plan:
            self.blocks.allocate(seq, seq.num_computed_tokens + 1)
        if not isinstance(self.runner, ModelRunner):
            raise RuntimeError("a step ahead runs on one rank's decode graphs only")
        sampled, sample_out = self.runner.execute_ahead(plan, last.out.token_ids)
        self._inflight = _Step(sampled, sample_out, self._readback.start(sample_out.token_ids))
        outputs = self._emit(last)
        self._advance(plan)  # after the emit: full blocks are hashed with the tokens it appended
        return outputs

    def _take_inflight(self) -> _Step:
        step, self._inflight = self._inflight, None
        if step is None:
            raise RuntimeError("no engine step is in flight")
        return step

    def _scatter_import(self, seq: Sequence) -> None:
        if seq.landed:  # copied when it arrived: this step runs after the copy
            self._order_after_landing(seq)
            seq.landed = False
            self.blocks.commit_full_blocks(seq)
            return
        self._copy_pending_kv(seq)
        seq.pending_kv = None
        self.blocks.commit_full_blocks(seq)

    def _copy_pending_kv(self, seq: Sequence) -> None:
        """Copy the imported rows into the blocks between the prefix-cache hits and num_computed_tokens."""
        have_blocks = len(seq.block_keys)  # prefix-cache hits attached at admission (>= the rows' start block)
        end = -(-seq.num_computed_tokens // self.config.block_size)
        if end > have_blocks:
            if seq.pending_kv is None:
                raise RuntimeError(f"request {seq.request_id}: its imported KV is gone before the copy")
            seq.pending_kv.copy_into(self.runner, seq.block_table[have_blocks:end], have_blocks - seq.pending_kv_start_block)
            if seq.imports_evict_first:
                seq.imported_blocks = (have_blocks, end)

    def _advance(self, plan: dict[Sequence, int]) -> None:
        for seq, n in plan.items():
            if seq.status is not SequenceStatus.RUNNING:
                continue  # finished while this step ran ahead
            start = seq.num_computed_tokens
            seq.num_computed_tokens += n
            self.blocks.commit_full_blocks(seq)
            if self.on_prefill_progress is not None and start < seq.num_prompt_tokens:
                done = seq.num_computed_tokens >= seq.num_prompt_tokens
                self.on_prefill_progress(
                    PrefillProgress(
                        seq.request_id, min(seq.num_computed_tokens, seq.num_prompt_tokens), seq.num_prompt_tokens, done
                    )
                )

    def _emit(self, step: _Step) -> list[RequestOutput]:
        sampled, out = step.sampled, step.out
        token_ids = self._readback.wait(step.tokens)  # the one host sync of the step: this step's samples only
        logprobs = out.logprobs.tolist() if out.logprobs is not None else None
        top_ids = out.top_token_ids.tolist() if out.top_token_ids is not None else None
        top_lps = out.top_logprobs.tolist() if out.top_logprobs is not None else None
        outputs = []
        for i, (seq, token) in enumerate(zip(sampled, token_ids)):
            if seq.status is not SequenceStatus.RUNNING:
                continue  # finished or aborted while a step ran ahead of this one: its token is dropped
            req = self.requests[seq.request_id]
            seq.token_ids.append(token)
            lp = None
            if seq.params.logprobs is not None and logprobs is not None:
                k = seq.params.logprobs
                top = list(zip(top_ids[i][:k], top_lps[i][:k])) if top_ids is not None and top_lps is not None else []
                lp = [TokenLogprob(token, logprobs[i], top)]
            req.detokenizer.add([token])
            reason, truncate_at = req.stop.check(seq.output_token_ids, req.detokenizer.text)
            reason = reason or self._advance_grammar(seq, token)
            if reason is None and seq.num_tokens >= self.max_model_len:
                reason = "length"
            if reason is not None or seq.prefill_only:
                self._finish(req, reason)
            outputs.append(self._output(req, [token], lp, truncate_at))
        return outputs

    def _admit_compiled(self) -> None:
        """Guided requests whose grammar is ready join the scheduler, after replaying their
        output so far (an imported first token) into it."""
        for rid, state in self.grammars.take_ready():
            req = self.requests.get(rid)
            if req is None:
                continue  # aborted while compiling
            if isinstance(state, Exception):
                log.warning("request %s: its grammar failed to compile: %s", rid, state)
                self._finish(req, "abort")
                self._ready.append(self._output(req, [], None, None))
                continue
            req.seq.grammar = state
            reason = next((r for t in req.seq.output_token_ids if (r := self._advance_grammar(req.seq, t))), None)
            if reason is not None:
                self._finish(req, reason)
                self._ready.append(self._output(req, [], None, None))
            else:
                self.scheduler.add(req.seq)

    @staticmethod
    def _advance_grammar(seq: Sequence, token: int) -> str | None:
        """Feed a sampled token to the request's grammar; "stop" once the grammar is complete.

        A token the grammar rejects (only possible for an imported first token sampled
        without it) also stops the request rather than continuing outside the grammar."""
        if seq.grammar is None:
            return None
        if not seq.grammar.accept(token) or seq.grammar.is_terminated:
            return "stop"
        return None

    def _finish(self, req: _Request, reason: str | None) -> None:
        seq = req.seq
        seq.finish_reason = reason
        hold = seq.prefill_only
        self.scheduler.finish(seq, keep_blocks=hold)
        seq.status = SequenceStatus.HELD if hold else SequenceStatus.FINISHED
        if not hold:
            del self.requests[seq.request_id]

    def _output(self, req: _Request, new: list[int], lp: list[TokenLogprob] | None, truncate_at: int | None) -> RequestOutput:
        seq = req.seq
        finished = seq.status in (SequenceStatus.FINISHED, SequenceStatus.HELD)
        text = req.detokenizer.text
        if finished and seq.status is SequenceStatus.FINISHED:
            text += req.detokenizer.finish()
        if truncate_at is not None:
            text = text[:truncate_at]
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            new_token_ids=new,
            output_token_ids=seq.output_token_ids,
            text=text,
            finished=finished,
            finish_reason=seq.finish_reason,
            num_cached_tokens=seq.num_cached_tokens,
            new_logprobs=lp,
        )

    def _publish_events(self) -> None:
        if self.on_kv_events is not None and self.blocks.events:
            self.on_kv_events(self.blocks.take_events())

    def shutdown(self) -> None:
        """Stop the rank processes of a parallel engine (a no-op at TP 1)."""
        self.runner.shutdown()

    # ---- load ----------------------------------------------------------------------------------
    def load(self) -> EngineLoad:
        held = sum(1 for r in self.requests.values() if r.seq.status is SequenceStatus.HELD)
        return EngineLoad(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting) + len(self.grammars),
            held=held,
            kv_usage=self.blocks.num_active / self.blocks.num_blocks,
            queued_prefill_tokens=self.scheduler.queued_prefill_tokens(),
            active_blocks=self.blocks.num_active,
            total_blocks=self.blocks.num_blocks,
            block_size=self.config.block_size,
            prefix_cache_queries=self.blocks.stats.queries,
            prefix_cache_hits=self.blocks.stats.hits,
        )
