"""Replay workloads as block-key chains: what routing and caching see of a request.

A request here is (arrival, prompt length, block keys, output length): no token lists,
so that the whole Mooncake trace (4k requests of ~15k tokens) fits in memory. Keys are
those of the token ids `splitserve bench` sends for the same workload (a trace hash id
becomes bench.serve.workloads.trace_block's tokens), memoised per (parent key, hash id)
because a trace block's keys depend only on its prefix and its own tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from bench.serve.workloads import trace_block
from kvstore.block_key import BlockKey, block_keys, root_key

TRACE_BLOCK_TOKENS = 512  # tokens per hash id in Mooncake-format traces


@dataclass(slots=True)
class ReplayRequest:
    index: int
    arrival_s: float
    prompt_len: int
    chain: list[BlockKey]  # keys of the prompt's full blocks
    output_len: int


class _ChainBuilder:
    def __init__(self, fingerprint: str, block_size: int, seed: int, vocab: tuple[int, int]) -> None:
        self.fingerprint, self.block_size, self.seed, self.vocab = fingerprint, block_size, seed, vocab
        self._memo: dict[tuple[BlockKey, int], list[BlockKey]] = {}

    def shared(self, parent: BlockKey, block_id: int, tokens: int) -> list[BlockKey]:
        """Keys of a shareable block (a trace hash id, a tenant's prompt) after ``parent``."""
        memo = self._memo.get((parent, block_id))
        if memo is None:
            ids = trace_block(block_id, tokens, self.seed, *self.vocab)
            memo = self._memo[(parent, block_id)] = block_keys(ids, self.fingerprint, self.block_size, parent=parent)
        return memo

    def unique(self, request: int, first_block: int, count: int) -> list[BlockKey]:
        """Keys no other request has (its own tokens): only their uniqueness matters."""
        return [xxhash.xxh3_128_digest(f"unique/{request}/{first_block + i}".encode()) for i in range(count)]

    def root(self) -> BlockKey:
        return root_key(self.fingerprint)


def mooncake_trace(path: str | Path, limit: int | None = None, time_scale: float = 1.0, output_scale: float = 1.0,
                   fingerprint: str = "sim", block_size: int = 16, seed: int = 0,
                   vocab: tuple[int, int] = (1000, 128256), skip: int = 0) -> list[ReplayRequest]:  # fmt: skip
    """A Mooncake-format trace: `time_scale` multiplies timestamps (0.5 = twice the rate); ``skip``
    drops the first N rows (a later slice of the trace, its time starting at its first row)."""
    builder = _ChainBuilder(fingerprint, block_size, seed, vocab)
    per_hash = TRACE_BLOCK_TOKENS // block_size
    requests: list[ReplayRequest] = []
    t0 = None
    with Path(path).open() as lines:
        for i, line in enumerate(lines):
            if i < skip:
                continue
            if limit is not None and i >= skip + limit:
                break
            row = json.loads(line)
            n_in = int(row["input_length"])
            full = n_in // block_size
            chain: list[BlockKey] = []
            parent = builder.root()
            for hash_id in row["hash_ids"]:
                if len(chain) >= full:
                    break
                keys = builder.shared(parent, int(hash_id), TRACE_BLOCK_TOKENS)
                chain += keys
                parent = keys[-1]
            chain = chain[:full] + builder.unique(i, len(chain), max(0, full - len(chain)))
            t0 = row["timestamp"] if t0 is None else t0
            arrival = (row["timestamp"] - t0) / 1000.0 * time_scale
            requests.append(ReplayRequest(i - skip, arrival, n_in, chain, max(1, round(row["output_length"] * output_scale))))
    assert all(len(r.chain) == r.prompt_len // block_size for r in requests) and per_hash > 0
    return requests


def tenants(num_requests: int, num_tenants: int = 150, prefix_len: int = 6000, question_len: int = 1200,
            output_len: int = 100, rate: float = 10.0, seed: int = 0, fingerprint: str = "sim",
            block_size: int = 16) -> list[ReplayRequest]:  # fmt: skip
    """Many tenants, each with its own long system prompt, asking short questions (Poisson arrivals)."""
    builder = _ChainBuilder(fingerprint, block_size, seed, (1000, 128256))
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, num_requests))
    requests = []
    for i in range(num_requests):
        tenant = int(rng.integers(0, num_tenants))
        prefix = builder.shared(builder.root(), 1_000_000 + tenant, prefix_len)
        n_in = prefix_len + question_len
        # the question continues the prefix's last partial block, so its keys are the request's own
        chain = prefix[: prefix_len // block_size] + builder.unique(
            i, prefix_len // block_size, n_in // block_size - prefix_len // block_size
        )
        requests.append(ReplayRequest(i, float(arrivals[i]), n_in, chain, output_len))
    return requests


def unique_prompts(like: list[ReplayRequest], seed: int = 0) -> list[ReplayRequest]:
    """The same arrivals and lengths as ``like``, but no two requests share a block."""
    builder = _ChainBuilder("sim", 16, seed, (1000, 128256))
    return [
        ReplayRequest(r.index, r.arrival_s, r.prompt_len, builder.unique(-1 - r.index, 0, len(r.chain)), r.output_len)
        for r in like
    ]
