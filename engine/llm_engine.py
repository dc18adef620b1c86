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

from engine.block_manager import BlockManager
from engine.checkpoint import fingerprint as checkpoint_fingerprint
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer, StopChecker
from engine.errors import OutOfKVBlocks, PromptTooLong, UnknownRequest
from engine.executor import make_runner
from engine.outputs import EngineLoad, PrefillProgress, RequestOutput, TokenLogprob
from engine.sampler import SamplerOutput
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence, SequenceStatus
from engine.structured_output import GrammarCompiler, GrammarPreparer, GrammarState
from engine.tokenizer_files import eos_token_ids, load_tokenizer
from kvstore.block_key import block_keys
from kvstore.events import KVEvent

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    stop: StopChecker


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
        # guided requests wait here, not in the scheduler, until their grammar is compiled
        self.grammars = GrammarPreparer(
            lambda: GrammarCompiler(self.tokenizer, self.runner.vocab_size, self.eos_token_ids)
        )

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
        kv: torch.Tensor,  # [n, L, 2, B, Hkv, D] rows of blocks start_block .. start_block + n
        num_tokens: int,
        first_token_id: int | None = None,
        *,
        start_block: int = 0,
        cache_salt: str = "",
        prefill_only: bool = False,
    ) -> None:
        """Add a request whose first ``num_tokens`` prompt tokens' KV comes from ``kv``.

        Rows before ``start_block`` must be in the local prefix cache (see
        ``cached_prefix_blocks``); if they are gone by admission time the request
        recomputes instead. ``prefill_only`` as in ``add_request`` (a prefill worker that
        imported a cached prefix from the store). ``first_token_id`` is the token the prefill side sampled;
        decoding continues after it.
        """
        if not 0 < num_tokens <= len(prompt_token_ids):
            raise ValueError(f"num_tokens={num_tokens} must be in 1..{len(prompt_token_ids)} (the prompt length)")
        expected_rows = -(-num_tokens // self.config.block_size) - start_block
        if kv.shape[0] != expected_rows:
            raise ValueError(f"kv has {kv.shape[0]} rows; {num_tokens} tokens from block {start_block} need {expected_rows}")
        seq = self._new_sequence(request_id, prompt_token_ids, params, prefill_only, cache_salt)
        seq.pending_kv, seq.pending_kv_tokens = kv, num_tokens
        seq.pending_kv_start_block = start_block
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

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or bool(self._ready) or len(self.grammars) > 0

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
        return block_keys(seq.token_ids[: num_full * self.config.block_size], self.fingerprint,
                          self.config.block_size, seq.cache_salt)

    def take_kv_events(self) -> list[KVEvent]:
        return self.blocks.take_events()

    # ---- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        self._admit_compiled()
        outputs, self._ready = self._ready, []
        sched = self.scheduler.schedule()
        for seq in sched.imports:
            self._scatter_import(seq)
        if sched.plan:
            sampled, sample_out = self.runner.execute(sched.plan)
            self._advance(sched.plan)
            if sample_out is not None:
                outputs += self._emit(sampled, sample_out)
        self._publish_events()
        return outputs

    def _scatter_import(self, seq: Sequence) -> None:
        block_size = self.config.block_size
        start = seq.pending_kv_start_block
        have_blocks = len(seq.block_keys)  # prefix-cache hits attached at admission (>= start)
        end = -(-seq.num_computed_tokens // block_size)
        if end > have_blocks:
            rows = seq.pending_kv[have_blocks - start : end - start]  # [n, L, 2, B, Hkv, D]
            self.runner.import_kv(seq.block_table[have_blocks:end], rows)
        seq.pending_kv = None
        self.blocks.commit_full_blocks(seq)

    def _advance(self, plan: dict[Sequence, int]) -> None:
        for seq, n in plan.items():
            start = seq.num_computed_tokens
            seq.num_computed_tokens += n
            self.blocks.commit_full_blocks(seq)
            if self.on_prefill_progress is not None and start < seq.num_prompt_tokens:
                done = seq.num_computed_tokens >= seq.num_prompt_tokens
                self.on_prefill_progress(
                    PrefillProgress(seq.request_id, min(seq.num_computed_tokens, seq.num_prompt_tokens), seq.num_prompt_tokens, done)
                )

    def _emit(self, sampled: list[Sequence], out: SamplerOutput) -> list[RequestOutput]:
        token_ids = out.token_ids.tolist()  # the one host sync of the step
        logprobs = out.logprobs.tolist() if out.logprobs is not None else None
        top_ids = out.top_token_ids.tolist() if out.top_token_ids is not None else None
        top_lps = out.top_logprobs.tolist() if out.top_logprobs is not None else None
        outputs = []
        for i, (seq, token) in enumerate(zip(sampled, token_ids)):
            req = self.requests[seq.request_id]
            seq.token_ids.append(token)
            lp = None
            if seq.params.logprobs is not None and logprobs is not None:
                k = seq.params.logprobs
                top = list(zip(top_ids[i][:k], top_lps[i][:k])) if top_ids is not None else []
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
