"""Per-request sampling parameters (OpenAI / vLLM conventions) and their validation."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from contracts.rpc import worker_pb2 as pb

GREEDY_TEMPERATURE = 1e-5  # below this a request is sampled greedily (argmax)
MAX_LOGPROBS = 20  # OpenAI's limit on top_logprobs
MAX_STOP_STRINGS = 16
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
LOGIT_BIAS_RANGE = 100.0  # OpenAI: biases in [-100, 100]
GUIDED_KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class InvalidSamplingParams(ValueError):
    """A sampling parameter is out of range; the message names the field and its allowed range."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class SamplingParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Travels as is: router -> proto (to_proto / from_proto below) -> engine core (contracts/core_messages.py)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: disabled
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = 16
    min_tokens: int = 0
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    stop: list[str] = msgspec.field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; n: sampled token's logprob + top n
    # (token id, bias) pairs added to the logits
    logit_bias: list[tuple[int, float]] = msgspec.field(default_factory=list)
    # vLLM's convention: lower values are served first (waiting queue) and preempted last
    priority: int = 0
    # structured output: guided_kind in GUIDED_KINDS ("" = off) and its spec
    # (a JSON schema / regex / JSON list of choices / EBNF grammar; empty for json_object)
    guided_kind: str = ""
    guided_spec: str = ""

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def is_guided(self) -> bool:
        return bool(self.guided_kind)

    def validate(self, vocab_size: int) -> None:
        """Raise InvalidSamplingParams naming the first field that is out of range."""
        self._check_float("temperature", self.temperature, 0.0 <= self.temperature, ">= 0")
        self._check_float("top_p", self.top_p, 0.0 < self.top_p <= 1.0, "in (0, 1]")
        if not _is_int(self.top_k) or not (self.top_k in (-1, 0) or self.top_k >= 1):
            raise InvalidSamplingParams(f"top_k={self.top_k!r} is invalid: allowed -1 or 0 (disabled) or an integer >= 1")
        self._check_float("min_p", self.min_p, 0.0 <= self.min_p <= 1.0, "in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            self._check_float(name, value, -2.0 <= value <= 2.0, "in [-2, 2]")
        self._check_float("repetition_penalty", self.repetition_penalty, self.repetition_penalty > 0.0, "> 0")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise InvalidSamplingParams(f"max_tokens={self.max_tokens!r} is invalid: allowed an integer >= 1")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidSamplingParams(
                f"min_tokens={self.min_tokens!r} is invalid: allowed an integer in [0, max_tokens={self.max_tokens}]"
            )
        for token_id in self.stop_token_ids:
            if not _is_int(token_id) or not 0 <= token_id < vocab_size:
                raise InvalidSamplingParams(f"stop_token_ids contains {token_id!r}: allowed token ids in [0, {vocab_size})")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise InvalidSamplingParams(
                f"logprobs={self.logprobs!r} is invalid: allowed None or an integer in [0, {MAX_LOGPROBS}]"
            )
        if self.seed is not None and (not _is_int(self.seed) or not _INT64_MIN <= self.seed <= _INT64_MAX):
            raise InvalidSamplingParams(
                f"seed={self.seed!r} is invalid: allowed None or an integer in [{_INT64_MIN}, {_INT64_MAX}]"
            )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidSamplingParams(f"stop has {len(self.stop)} strings: allowed at most {MAX_STOP_STRINGS}")
        for stop in self.stop:
            if not isinstance(stop, str) or not stop:
                raise InvalidSamplingParams(f"stop contains {stop!r}: allowed non-empty strings only")

        self._validate_extras(vocab_size)

    def _validate_extras(self, vocab_size: int) -> None:
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidSamplingParams(f"logit_bias has {len(self.logit_bias)} entries: allowed at most {MAX_LOGIT_BIAS}")
        for pair in self.logit_bias:
            token_id, bias = pair if isinstance(pair, (list, tuple)) and len(pair) == 2 else (pair, None)
            if not _is_int(token_id) or not 0 <= token_id < vocab_size:
                raise InvalidSamplingParams(f"logit_bias has token id {token_id!r}: allowed token ids in [0, {vocab_size})")
            if not _is_number(bias) or not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:
                raise InvalidSamplingParams(
                    f"logit_bias[{token_id}]={bias!r} is invalid: allowed a number in "
                    f"[-{LOGIT_BIAS_RANGE:g}, {LOGIT_BIAS_RANGE:g}]"
                )
        if not _is_int(self.priority) or not _INT64_MIN <= self.priority <= _INT64_MAX:
            raise InvalidSamplingParams(f"priority={self.priority!r} is invalid: allowed an integer")
        if self.guided_kind not in ("", *GUIDED_KINDS):
            raise InvalidSamplingParams(f"guided_kind={self.guided_kind!r} is invalid: allowed one of {list(GUIDED_KINDS)}")
        if self.guided_kind not in ("", "json_object") and not self.guided_spec:
            raise InvalidSamplingParams(
                f"guided_spec is empty: guided_kind={self.guided_kind!r} needs a schema, regex, choice list or grammar"
            )
        if self.guided_kind in ("json_schema", "choice"):
            # cheap checks now; whether the grammar compiles shows only when it is compiled
            try:
                spec = json.loads(self.guided_spec)
            except json.JSONDecodeError as exc:
                raise InvalidSamplingParams(f"guided_spec of {self.guided_kind} is not JSON: {exc}") from exc
            expected = dict if self.guided_kind == "json_schema" else list
            if not isinstance(spec, expected):
                raise InvalidSamplingParams(
                    f"guided_spec of {self.guided_kind} must be a JSON {'object' if expected is dict else 'list'}"
                )

    @staticmethod
    def _check_float(name: str, value: Any, in_range: bool, allowed: str) -> None:
        # NaN fails every comparison, so it lands here too.
        if not _is_number(value) or not in_range:
            raise InvalidSamplingParams(f"{name}={value!r} is invalid: allowed a number {allowed}")


def to_proto(params: SamplingParams) -> pb.SamplingParams:
    """Engine params -> worker.proto, every field set (so the worker never guesses a default)."""
    return pb.SamplingParams(
        temperature=params.temperature,
        top_k=params.top_k,
        min_p=params.min_p,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        max_tokens=params.max_tokens,
        min_tokens=params.min_tokens,
        stop_token_ids=params.stop_token_ids,
        stop=params.stop,
        ignore_eos=params.ignore_eos,
        logit_bias=dict(params.logit_bias),
        priority=params.priority,
        guided_kind=params.guided_kind,
        guided_spec=params.guided_spec,
        top_p=params.top_p,
        repetition_penalty=params.repetition_penalty,
        seed=params.seed,
        logprobs=params.logprobs,
    )


def from_proto(msg: pb.SamplingParams | None) -> SamplingParams:
    """worker.proto -> engine params; an absent message or an unset optional field means the engine default."""
    if msg is None:
        return SamplingParams()
    default = SamplingParams()
    return SamplingParams(
        temperature=msg.temperature,
        top_p=msg.top_p if msg.HasField("top_p") else default.top_p,
        top_k=msg.top_k,
        min_p=msg.min_p,
        seed=msg.seed if msg.HasField("seed") else None,
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        repetition_penalty=msg.repetition_penalty if msg.HasField("repetition_penalty") else default.repetition_penalty,
        max_tokens=msg.max_tokens if msg.HasField("max_tokens") else default.max_tokens,
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
