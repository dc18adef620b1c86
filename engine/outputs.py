"""What the engine hands back per request and step (its load report: contracts/core_messages.py EngineLoad)."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.core_messages import TokenLogprob


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    new_token_ids: list[int]  # tokens produced by this step
    output_token_ids: list[int]  # all output tokens so far
    text: str  # output text so far (final text on the finishing step)
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | None
    num_cached_tokens: int  # prompt tokens not computed here (prefix hit or imported)
    new_logprobs: list[TokenLogprob] | None = None  # one per new token when params.logprobs is set


@dataclass(slots=True)
class PrefillProgress:
    """A prompt's KV is final for tokens [0, num_computed_tokens): blocks up to
    num_computed_tokens // block_size are full and immutable (plus the partial tail
    once ``done``)."""

    request_id: str
    num_computed_tokens: int
    num_prompt_tokens: int
    done: bool
