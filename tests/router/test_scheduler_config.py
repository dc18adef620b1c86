"""Scheduling policies are configs: shipped files, custom pipelines, and clear errors for bad ones."""

import json

import pytest
from scheduler_support import request, worker

from router.prefix_index import PrefixIndex
from router.scheduler import Mode, Scheduler
from router.scheduler_config import (
    Policy,
    SchedulerConfigError,
    load_policy,
    load_scheduler_config,
    parse_scheduler_config,
)
from router.workers import Role

PROMPT = list(range(2048))


def pipeline(prefill_scorers: list[dict], filters: list[dict] | None = None) -> dict:
    simple = {"scorers": [{"type": "running-requests", "weight": 1}], "picker": {"type": "min-cost"}}
    return {
        "decider": {"basis": "uncached", "colocate_threshold_tokens": 0},
        "profiles": {"prefill": {"filters": filters or [], "scorers": prefill_scorers}, "decode": simple, "colocated": simple},
    }


@pytest.mark.parametrize("policy", list(Policy))
def test_every_shipped_policy_loads_and_places_a_request(policy):
    sched = Scheduler(load_policy(policy), PrefixIndex())
    d = sched.decide(request(PROMPT), [worker("p1", Role.PREFILL)], [worker("d1", Role.DECODE)])
    assert (d.mode, d.prefill_worker, d.decode_worker) == (Mode.DISAGGREGATED, "p1", "d1")


def test_least_loaded_ignores_the_prefix_and_kv_aware_follows_it():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("p1", req.block_keys)  # p1 holds the whole prompt but has work queued
    prefill = [worker("p1", Role.PREFILL, queued_prefill_tokens=1000), worker("p2", Role.PREFILL)]
    decode = [worker("d1", Role.DECODE)]
    assert Scheduler(load_policy("least-loaded"), index).decide(req, prefill, decode).prefill_worker == "p2"
    assert Scheduler(load_policy("kv-aware"), index).decide(req, prefill, decode).prefill_worker == "p1"


def test_scorer_weights_from_the_file_change_the_decision(tmp_path):
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("p1", req.block_keys[:64])  # 1024 tokens cached on p1, which runs 8 requests
    prefill = [worker("p1", Role.PREFILL, running_requests=8), worker("p2", Role.PREFILL)]
    decode = [worker("d1", Role.DECODE)]
    for prefix_weight, expected in ((1.0, "p1"), (0.01, "p2")):
        path = tmp_path / f"w{prefix_weight}.json"
        path.write_text(json.dumps(pipeline([
            {"type": "uncached-tokens", "weight": prefix_weight},
            {"type": "running-requests", "weight": 16},
        ])))  # fmt: skip
        assert Scheduler(load_scheduler_config(path), index).decide(req, prefill, decode).prefill_worker == expected


def test_kv_usage_filter_skips_nearly_full_workers_unless_all_are():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("p1", req.block_keys)
    config = parse_scheduler_config(pipeline([{"type": "uncached-tokens"}], [{"type": "kv-usage-below", "max_usage": 0.9}]))
    sched = Scheduler(config, index)
    full = worker("p1", Role.PREFILL, active_kv_blocks=950)
    decode = [worker("d1", Role.DECODE)]
    assert sched.decide(req, [full, worker("p2", Role.PREFILL)], decode).prefill_worker == "p2"
    assert sched.decide(req, [full], decode).prefill_worker == "p1"  # a filter never empties the pool


def test_predicted_ttft_scorer_prefers_the_faster_worker():
    config = parse_scheduler_config(pipeline([{"type": "predicted-ttft"}]))
    fast, slow = worker("p1", Role.PREFILL, queued_prefill_tokens=4000), worker("p2", Role.PREFILL)
    fast.prefill_rate_tps, slow.prefill_rate_tps = 40_000.0, 2_000.0
    d = Scheduler(config, PrefixIndex()).decide(request(PROMPT), [slow, fast], [worker("d1", Role.DECODE)])
    assert d.prefill_worker == "p1"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["profiles"]["prefill"]["scorers"].append({"type": "magic"}), "unknown scorer type 'magic'"),
        (lambda c: c["profiles"]["prefill"]["scorers"].append({"type": "kv-usage", "bogus": 1}), "bad parameters"),
        (lambda c: c["profiles"].pop("colocated"), "must define exactly prefill, decode, colocated"),
        (lambda c: c["decider"].update(basis="vibes"), "decider.basis: bad value 'vibes'"),
        (lambda c: c.update(extra=1), "unknown key(s) extra"),
        (lambda c: c["profiles"]["decode"].update(picker={"type": "min-cost", "weight": 2}), "only scorers take a weight"),
        (lambda c: c["profiles"]["decode"]["scorers"][0].update(weight="heavy"), "weight must be a number"),
    ],
)
def test_a_bad_config_is_refused_with_a_message_naming_the_field(mutate, message):
    raw = pipeline([{"type": "uncached-tokens"}])
    mutate(raw)
    with pytest.raises(SchedulerConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_scheduler_config(raw)


def test_unreadable_or_malformed_files_are_refused(tmp_path):
    with pytest.raises(SchedulerConfigError, match="cannot read"):
        load_scheduler_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: [unclosed")
    with pytest.raises(SchedulerConfigError, match="not valid YAML"):
        load_scheduler_config(bad)


def test_router_cli_rejects_a_bad_scheduler_config_before_starting(tmp_path, model_dir):
    from splitserve.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"profiles": {}}))
    with pytest.raises(SystemExit, match="splitserve router: .*profiles"):
        main(["router", "--model", str(model_dir), "--decode", "127.0.0.1:1", "--scheduler-config", str(bad)])
