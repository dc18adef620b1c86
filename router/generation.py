"""One API request -> sampling parameters, placement, token stream, detokenized text."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from contracts.rpc import worker_pb2
from contracts.sampling import InvalidSamplingParams, SamplingParams
from contracts.sampling import to_proto as sampling_to_proto
from router.errors import APIError
from router.protocol import ChatCompletionRequest, CompletionRequest


@dataclass(slots=True)
class TokenEvent:
    """Detokenized output of one choice since the last event."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[worker_pb2.TokenLogprob]
    finish_reason: str | None = None


@dataclass(slots=True)
class ChoiceState:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    num_cached_tokens: int = 0


def _logit_bias(req: CompletionRequest | ChatCompletionRequest) -> list[tuple[int, float]]:
    pairs = []
    for key, bias in (req.logit_bias or {}).items():
        if not key.strip().isdigit():
            raise APIError(400, f"logit_bias key {key!r} is not a token id", param="logit_bias", code="invalid_value")
        pairs.append((int(key), bias))
    return pairs


def sampling_params(
    req: CompletionRequest | ChatCompletionRequest,
    prompt_len: int,
    max_model_len: int,
    vocab_size: int,
    max_n: int,
    guide: tuple[str, ...] = ("", ""),
) -> SamplingParams:
    """Validate and fill OpenAI defaults (temperature 1.0; seed stays unset unless given).

    ``guide`` is the structured-output (guided_kind, guided_spec), see router.guide_request."""
    if req.n > max_n:
        raise APIError(400, f"n={req.n} is too large: at most {max_n} choices per request", param="n")
    if prompt_len >= max_model_len:
        raise APIError(
            400,
            f"the prompt has {prompt_len} tokens; this model's context is {max_model_len} tokens",
            param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
            code="context_length_exceeded",
        )
    max_tokens = req.max_tokens
    if isinstance(req, ChatCompletionRequest):
        max_tokens = req.max_completion_tokens or req.max_tokens
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    else:
        logprobs = req.logprobs
    room = max_model_len - prompt_len
    if max_tokens is None:
        max_tokens = room
    elif max_tokens > room:
        raise APIError(
            400,
            f"max_tokens={max_tokens} plus the prompt's {prompt_len} tokens exceed the context of {max_model_len}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    params = SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=-1 if req.top_k is None else req.top_k,
        min_p=req.min_p or 0.0,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        max_tokens=max_tokens,
        min_tokens=req.min_tokens,
        stop_token_ids=list(req.stop_token_ids or []),
        stop=stop,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        logit_bias=_logit_bias(req),
        priority=req.priority,
        guided_kind=guide[0],
        guided_spec=guide[1],
    )
    try:
        params.validate(vocab_size)
    except InvalidSamplingParams as exc:
        param = str(exc).split("=", 1)[0].split(" ", 1)[0]
        raise APIError(400, str(exc), param=param, code="invalid_value") from exc
    return params


def to_proto(params: SamplingParams, choice_index: int) -> worker_pb2.SamplingParams:
    msg = sampling_to_proto(params)
    if params.seed is not None:
        # n > 1 with a seed: distinct but reproducible samples per choice.
        msg.seed = params.seed + choice_index
    return msg


async def detokenize_stream(
    index: int,
    chunks: AsyncIterator,
    tokenizer: object,
    prompt_ids: list[int],
    params: SamplingParams,
    eos_ids: set[int],
    state: ChoiceState,
    on_token: object = None,
) -> AsyncIterator[TokenEvent]:
    """Token chunks from the backend -> text deltas, applying stop strings and stop tokens.

    The router holds back text that may begin a stop string, so a client never sees
    text that a later stop string would remove.
    """
    from engine.detokenizer import IncrementalDetokenizer, StopChecker

    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    checker = StopChecker(params, eos_ids)
    sent = 0
    async for chunk in chunks:
        state.num_cached_tokens = max(state.num_cached_tokens, chunk.num_cached_tokens)
        new_ids: list[int] = []
        finish: str | None = None
        for token_id in chunk.token_ids:
            if callable(on_token):
                on_token()
            new_ids.append(token_id)
            state.token_ids.append(token_id)
            detok.add([token_id])
            finish, truncate_at = checker.check(state.token_ids, detok.text)
            if finish is not None:
                # flush held-back bytes as the engine does (incomplete UTF-8 becomes U+FFFD), then cut at the stop string
                text = detok.text + detok.finish()
                state.text = text if truncate_at is None else text[:truncate_at]
                break
        if finish is None and chunk.finish_reason:
            finish = "stop" if chunk.finish_reason == "abort" else chunk.finish_reason
            state.text = detok.text + detok.finish()
        if finish is None:
            state.text = detok.text
            safe = checker.safe_prefix_len(state.text)
            if safe > sent:
                yield TokenEvent(index, state.text[sent:safe], new_ids, chunk.logprobs[: len(new_ids)])
                sent = safe
            elif new_ids:
                yield TokenEvent(index, "", new_ids, chunk.logprobs[: len(new_ids)])
            continue
        state.finish_reason = finish
        yield TokenEvent(index, state.text[sent:], new_ids, chunk.logprobs[: len(new_ids)], finish)
        return


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
