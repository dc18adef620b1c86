"""Metric definitions checked against hand-computed cases."""

import math

import numpy as np
import pytest

from bench.serve.client import RequestRecord
from bench.serve.config import SLO, parse_slo
from bench.serve.metrics import itls, meets_slo, percentile, prefix_hit_rate, summarize, tpot, ttft
from bench.serve.prometheus import metric_sum, prefix_hit_delta


def _record(send, chunks, output_tokens, end=None, index=0, error=None):
    return RequestRecord(
        index=index,
        send_time=send,
        first_token_time=chunks[0] if chunks else None,
        chunk_times=list(chunks),
        end_time=end if end is not None else (chunks[-1] if chunks else None),
        output_tokens=output_tokens,
        error=error,
    )


def test_percentile_interpolates_linearly_between_ranks():
    values = [4.0, 1.0, 3.0, 2.0]  # sorted 1 2 3 4; rank = q/100 * 3
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert math.isnan(percentile([], 50))


def test_percentile_equals_numpy_default_method():
    values = np.random.default_rng(3).exponential(size=101).tolist()
    for q in (1, 50, 90, 99, 99.9):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_ttft_tpot_itl_of_one_request():
    r = _record(send=10.0, chunks=[10.5, 10.6, 10.8, 11.1], output_tokens=4, end=11.1)
    assert ttft(r) == pytest.approx(0.5)
    assert tpot(r) == pytest.approx((1.1 - 0.5) / 3)  # (e2e - ttft) / (tokens - 1)
    assert itls(r) == pytest.approx([0.1, 0.2, 0.3])


def test_tpot_is_undefined_for_a_one_token_answer():
    assert tpot(_record(send=0.0, chunks=[0.2], output_tokens=1)) is None


def test_tpot_counts_tokens_not_chunks():
    # two chunks carrying 5 tokens: decode time 0.8 s over 4 later tokens
    assert tpot(_record(send=0.0, chunks=[0.2, 1.0], output_tokens=5)) == pytest.approx(0.2)


def test_summary_throughput_goodput_and_attainment():
    records = [
        _record(0.0, [0.1, 0.2, 0.3], 3, index=0),  # ttft 0.1, tpot 0.1 -> meets
        _record(0.0, [0.6, 0.7], 2, index=1),  # ttft 0.6 -> misses ttft
        _record(1.0, [1.1, 1.5, 1.9], 3, end=2.0, index=2),  # tpot 0.45 -> misses tpot
        _record(1.0, [1.2], 1, index=3),  # one token: tpot undefined, meets
        RequestRecord(index=4, send_time=1.5, error="HTTP 500: boom"),  # failure misses
    ]
    slo = SLO(ttft_s=0.5, tpot_s=0.2)
    assert [meets_slo(r, slo) for r in records] == [True, False, False, True, False]
    s = summarize(records, slo)
    assert s.duration_s == pytest.approx(2.0)  # first send 0.0 to last end 2.0
    assert (s.completed, s.failed) == (4, 1)
    assert s.request_throughput == pytest.approx(4 / 2.0)
    assert s.output_throughput == pytest.approx(9 / 2.0)
    assert s.goodput == pytest.approx(2 / 2.0)
    assert s.slo_attainment == pytest.approx(2 / 5)
    assert s.ttft_s.mean == pytest.approx((0.1 + 0.6 + 0.1 + 0.2) / 4)
    assert s.itl_s.count == 2 + 1 + 2
    assert s.tpot_s.count == 3


def test_no_slo_means_no_goodput():
    s = summarize([_record(0.0, [0.1, 0.2], 2)], SLO())
    assert s.goodput is None and s.slo_attainment is None


def test_parse_slo_reads_milliseconds_and_seconds():
    assert parse_slo("ttft=500ms,tpot=50ms,e2e=2s") == SLO(0.5, 0.05, 2.0)
    with pytest.raises(ValueError):
        parse_slo("latency=1s")


METRICS_BEFORE = """# HELP splitserve_router_prompt_tokens_total prompt tokens
# TYPE splitserve_router_prompt_tokens_total counter
splitserve_router_prompt_tokens_total 1000.0
splitserve_router_realised_prefix_hit_tokens_total 200.0
splitserve_router_prompt_tokens_created 1.7e9
"""
METRICS_AFTER = METRICS_BEFORE.replace("1000.0", "3000.0").replace("200.0", "1700.0")
WORKER = (
    'splitserve_worker_prefix_cache_queries_total{role="prefill"} %s\n'
    'splitserve_worker_prefix_cache_hits_total{role="prefill"} %s\n'
)


def test_prefix_hit_rate_from_router_counter_deltas():
    delta = prefix_hit_delta((METRICS_BEFORE, []), (METRICS_AFTER, []))
    assert delta == (1500.0, 2000.0)
    assert prefix_hit_rate(*delta) == pytest.approx(0.75)


def test_prefix_hit_rate_falls_back_to_worker_counters_summed_over_workers():
    before = (None, [WORKER % (100, 10), WORKER % (50, 0)])
    after = (None, [WORKER % (300, 110), WORKER % (150, 50)])
    assert prefix_hit_delta(before, after) == (150.0, 300.0)
    assert prefix_hit_delta((None, []), (None, [])) is None


def test_metric_sum_adds_label_sets_and_ignores_similar_names():
    text = 'x_total{a="1"} 2\nx_total{a="2"} 3\nx_total_created 99\n'
    assert metric_sum(text, "x_total") == 5.0
    assert metric_sum(text, "y_total") is None
