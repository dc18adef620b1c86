"""Conversions between worker.proto messages and the engine's records."""

from __future__ import annotations

from engine.sampling_params import SamplingParams
from splitserve.rpc import worker_pb2 as pb


def sampling_params(msg: pb.SamplingParams, has_field: bool) -> SamplingParams:
    """Proto -> engine params; an absent message means the engine defaults."""
    if not has_field:
        return SamplingParams()
    return SamplingParams(
        temperature=msg.temperature,
        top_p=msg.top_p if msg.top_p > 0 else 1.0,  # proto3 default 0 means "not set"
        top_k=msg.top_k,
        min_p=msg.min_p,
        seed=msg.seed if msg.HasField("seed") else None,
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        repetition_penalty=msg.repetition_penalty if msg.repetition_penalty != 0 else 1.0,
        max_tokens=msg.max_tokens if msg.max_tokens != 0 else 16,
        min_tokens=msg.min_tokens,
        stop_token_ids=list(msg.stop_token_ids),
        stop=list(msg.stop),
        ignore_eos=msg.ignore_eos,
        logprobs=msg.logprobs if msg.HasField("logprobs") else None,
        logit_bias=sorted(msg.logit_bias.items()),
        priority=msg.priority,
        guided_kind=msg.guided_kind,
        guided_spec=msg.guided_spec,
    )


def token_logprob(raw: list | None) -> pb.TokenLogprob | None:
    if raw is None:
        return None
    token_id, logprob, top = raw
    return pb.TokenLogprob(token_id=token_id, logprob=logprob, top=[pb.TopLogprob(token_id=t, logprob=lp) for t, lp in top])
