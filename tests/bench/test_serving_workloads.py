"""Workloads are deterministic, valid for the vocabulary, and a trace keeps its sharing."""

import json

import numpy as np
import pytest

from bench.serve.arrivals import arrival_offsets
from bench.serve.config import PromptFormat, WorkloadConfig, WorkloadKind
from bench.serve.workloads import build_workload


def _write_trace(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


TRACE_ROWS = [
    {"timestamp": 1000, "input_length": 1200, "output_length": 10, "hash_ids": [0, 1, 2]},
    {"timestamp": 3000, "input_length": 1100, "output_length": 64, "hash_ids": [0, 1, 7]},
    {"timestamp": 5000, "input_length": 512, "output_length": 3, "hash_ids": [9]},
    {"timestamp": 9000, "input_length": 2000, "output_length": 5, "hash_ids": [0, 1]},
]


def _trace_config(tmp_path, **kw):
    base = dict(
        kind=WorkloadKind.TRACE, trace_path=_write_trace(tmp_path / "t.jsonl", TRACE_ROWS), vocab_size=5000, min_token_id=100
    )
    return WorkloadConfig(**{**base, **kw})


def test_trace_equal_hash_ids_give_equal_blocks_and_different_ids_differ(tmp_path):
    reqs = build_workload(_trace_config(tmp_path, trace_length_scale=1 / 32, num_requests=10))
    block = 16  # 512 * 1/32
    a, b, c, d = (r.prompt for r in reqs)
    assert a[: 2 * block] == b[: 2 * block] == d[: 2 * block]  # hash ids 0, 1 shared
    assert a[2 * block : 3 * block] != b[2 * block : 3 * block]  # 2 vs 7
    assert c[:block] != a[:block]  # 9 vs 0


def test_trace_scales_lengths_and_time(tmp_path):
    reqs = build_workload(_trace_config(tmp_path, trace_length_scale=1 / 32, trace_time_scale=0.5, trace_output_scale=0.5))
    assert [len(r.prompt) for r in reqs] == [round(1200 / 32), round(1100 / 32), 16, round(2000 / 32)]
    assert [r.max_tokens for r in reqs] == [5, 32, 2, 2]  # output scaled, at least one token
    assert [r.arrival_s for r in reqs] == pytest.approx([0.0, 1.0, 2.0, 4.0])  # ms -> s, x0.5, from first
    # tokens past the hashed blocks are the request's own, not another request's
    assert reqs[3].prompt[32:48] != reqs[0].prompt[32:48]


def test_trace_request_cap_and_determinism(tmp_path):
    config = _trace_config(tmp_path, num_requests=2, trace_length_scale=0.05)
    first, again = build_workload(config), build_workload(config)
    assert len(first) == 2
    assert [r.prompt for r in first] == [r.prompt for r in again]


def test_token_ids_stay_in_the_valid_range():
    config = WorkloadConfig(kind=WorkloadKind.RANDOM, num_requests=50, vocab_size=300, min_token_id=250, input_len=(5, 40))
    reqs = build_workload(config)
    ids = [t for r in reqs for t in r.prompt]
    assert min(ids) >= 250 and max(ids) < 300
    assert all(5 <= len(r.prompt) <= 40 and 32 <= r.max_tokens <= 128 for r in reqs)


def test_missing_vocab_size_is_an_actionable_error():
    with pytest.raises(ValueError, match="--vocab-size"):
        build_workload(WorkloadConfig(kind=WorkloadKind.RANDOM, num_requests=1))


def test_shared_prefix_requests_share_exactly_their_group_prefix():
    config = WorkloadConfig(
        kind=WorkloadKind.SHARED_PREFIX, num_requests=40, vocab_size=32000, num_groups=3, prefix_len=50, question_len=10
    )
    reqs = build_workload(config)
    prefixes = {tuple(r.prompt[:50]) for r in reqs}
    assert len(prefixes) == 3
    assert all(len(r.prompt) == 60 for r in reqs)


def test_multi_turn_packs_turns_into_conversations():
    config = WorkloadConfig(kind=WorkloadKind.MULTI_TURN, num_requests=10, turns=4, turn_len=5)
    convs = build_workload(config)
    assert [len(c.user_turns) for c in convs] == [4, 4, 2]
    assert all(len(t.split()) == 5 for c in convs for t in c.user_turns)


def test_text_prompts_have_the_requested_word_count():
    config = WorkloadConfig(kind=WorkloadKind.RANDOM, num_requests=3, prompt_format=PromptFormat.TEXT, input_len=(7, 7))
    assert all(len(r.prompt.split()) == 7 for r in build_workload(config))


@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_arrivals_mean_gap_is_one_over_rate(burstiness):
    offsets = arrival_offsets(20001, rate=8.0, burstiness=burstiness, seed=1)
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.05)
    # gamma(shape k): coefficient of variation = 1/sqrt(k); Poisson has CV 1
    assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.08)


def test_infinite_rate_sends_everything_at_once():
    assert arrival_offsets(3, rate=None) == [0.0, 0.0, 0.0]
