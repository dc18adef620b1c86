"""Workloads: the requests a benchmark sends, built deterministically from a seed.

Synthetic prompts are random token ids in ``[min_token_id, vocab_size)`` (or words,
for text prompts and chat). A trace replay turns each hash id of the trace into one
block of token ids seeded by that hash id, so equal ids give equal blocks and the
trace's prefix sharing reaches the server unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.serve.config import PromptFormat, WorkloadConfig, WorkloadKind

# A fixed word list: most tokenizers map each of these to one token after a space.
_WORDS = (
    "the of and to in is was for on that with as by at from his her are an be this "
    "which or had it not but one have were they all there we their been has more "
    "when who will would no so if out up what about into than them can only other "
    "new some time could these two may then first any like our now over such"
).split()

_PAD_STREAM = 1 << 40  # seed offset of per-request tokens, disjoint from hash-id blocks


@dataclass(slots=True)
class BenchRequest:
    """One request (or, for chat, one conversation of `user_turns`)."""

    index: int
    prompt: list[int] | str | None  # /v1/completions
    max_tokens: int
    user_turns: list[str] = field(default_factory=list)  # /v1/chat/completions
    arrival_s: float | None = None  # offset from the start (trace replay)
    prompt_len: int = 0  # tokens (or words) the workload meant to send

    @property
    def is_chat(self) -> bool:
        return bool(self.user_turns)


class _Units:
    """Draws prompt units (token ids or words) from a seeded generator."""

    def __init__(self, config: WorkloadConfig) -> None:
        self.text = config.prompt_format is PromptFormat.TEXT
        self.low, self.high = config.min_token_id, config.vocab_size or 0
        if self.text:
            return
        if config.vocab_size is None:
            raise ValueError("vocab_size is unknown: pass --vocab-size or serve it in /v1/models")
        if not 0 <= self.low < self.high:
            raise ValueError(f"token id range [{self.low}, {self.high}) is empty")

    def draw(self, rng: np.random.Generator, n: int) -> list:
        if self.text:
            return [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=n)]
        return rng.integers(self.low, self.high, size=n).tolist()

    def prompt(self, units: list) -> list[int] | str:
        return " ".join(units) if self.text else units


def _random(config: WorkloadConfig, count: int) -> list[BenchRequest]:
    rng = np.random.default_rng(config.seed)
    units = _Units(config)
    requests = []
    for i in range(count):
        n_in = int(rng.integers(config.input_len[0], config.input_len[1] + 1))
        n_out = int(rng.integers(config.output_len[0], config.output_len[1] + 1))
        requests.append(BenchRequest(i, units.prompt(units.draw(rng, n_in)), n_out, prompt_len=n_in))
    return requests


def _shared_prefix(config: WorkloadConfig, count: int) -> list[BenchRequest]:
    rng = np.random.default_rng(config.seed)
    units = _Units(config)
    prefixes = [units.draw(rng, config.prefix_len) for _ in range(config.num_groups)]
    requests = []
    for i in range(count):
        group = int(rng.integers(0, config.num_groups))
        body = prefixes[group] + units.draw(rng, config.question_len)
        n_out = int(rng.integers(config.output_len[0], config.output_len[1] + 1))
        requests.append(BenchRequest(i, units.prompt(body), n_out, prompt_len=len(body)))
    return requests


def _multi_turn(config: WorkloadConfig, count: int) -> list[BenchRequest]:
    """`count` is the number of turns; they are packed into conversations of `turns`."""
    rng = np.random.default_rng(config.seed)
    words = _Units(WorkloadConfig(prompt_format=PromptFormat.TEXT))
    conversations = []
    for c, start in enumerate(range(0, count, config.turns)):
        n_turns = min(config.turns, count - start)
        turns = [" ".join(words.draw(rng, config.turn_len)) for _ in range(n_turns)]
        n_out = int(rng.integers(config.output_len[0], config.output_len[1] + 1))
        conversations.append(BenchRequest(c, None, n_out, user_turns=turns, prompt_len=config.turn_len))
    return conversations


def trace_block(hash_id: int, size: int, seed: int, low: int, high: int) -> list[int]:
    """The token ids standing for one trace hash id: a function of (seed, hash id) only."""
    return np.random.default_rng([seed, hash_id]).integers(low, high, size=size).tolist()


def _trace(config: WorkloadConfig, count: int) -> list[BenchRequest]:
    if not config.trace_path:
        raise ValueError("the trace workload needs --trace PATH (a Mooncake-format .jsonl)")
    units = _Units(config)
    if units.text:
        raise ValueError("trace replay sends token ids; use --prompt-format tokens")
    block = max(1, round(config.trace_block_size * config.trace_length_scale))
    requests: list[BenchRequest] = []
    t0: float | None = None
    with Path(config.trace_path).open() as lines:
        for i, line in enumerate(lines):
            if len(requests) >= count:
                break
            row = json.loads(line)
            n_in = max(1, round(row["input_length"] * config.trace_length_scale))
            prompt: list[int] = []
            for hash_id in row["hash_ids"]:
                if len(prompt) >= n_in:
                    break
                prompt += trace_block(hash_id, block, config.seed, units.low, units.high)
            if len(prompt) < n_in:  # tokens beyond the hashed blocks belong to this request
                pad_rng = np.random.default_rng([config.seed, _PAD_STREAM + i])
                prompt += units.draw(pad_rng, n_in - len(prompt))
            t0 = row["timestamp"] if t0 is None else t0
            arrival = (row["timestamp"] - t0) / 1000.0 * config.trace_time_scale
            n_out = max(1, round(row["output_length"] * config.trace_output_scale))
            requests.append(BenchRequest(i, prompt[:n_in], n_out, arrival_s=arrival, prompt_len=n_in))
    return requests


_BUILDERS = {
    WorkloadKind.RANDOM: _random,
    WorkloadKind.SHARED_PREFIX: _shared_prefix,
    WorkloadKind.MULTI_TURN: _multi_turn,
    WorkloadKind.TRACE: _trace,
}


def build_workload(config: WorkloadConfig, count: int | None = None) -> list[BenchRequest]:
    """The first `count` (default `num_requests`) requests of the workload, deterministic."""
    return _BUILDERS[WorkloadKind(config.kind)](config, config.num_requests if count is None else count)
