"""A worker's step budget follows its role unless the flag says otherwise."""

from __future__ import annotations

import argparse

import pytest

from engine.server.worker_options import DECODE_STEP_TOKENS, PREFILL_STEP_TOKENS, add_worker_flags, options_from_args


def options(role: str, *flags: str):
    p = argparse.ArgumentParser()
    add_worker_flags(p, role)
    return options_from_args(p.parse_args(["--model", "m", "--kvstore", "h:1", *flags]), role)


def test_a_prefill_worker_takes_larger_steps_than_a_decode_worker_by_default() -> None:
    # a prefill worker has no decodes whose ITL a long prefill step would stall
    assert options("prefill").max_num_batched_tokens == PREFILL_STEP_TOKENS
    assert options("decode").max_num_batched_tokens == DECODE_STEP_TOKENS
    assert PREFILL_STEP_TOKENS > DECODE_STEP_TOKENS


def test_the_flag_sets_the_step_budget_of_either_role() -> None:
    assert options("prefill", "--max-num-batched-tokens", "1024").max_num_batched_tokens == 1024
    assert options("decode", "--max-num-batched-tokens", "4096").max_num_batched_tokens == 4096


def test_a_step_budget_of_no_tokens_is_refused() -> None:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_worker_flags(p, "prefill")
    with pytest.raises(argparse.ArgumentError, match="positive"):
        p.parse_args(["--model", "m", "--max-num-batched-tokens", "0"])


def test_a_decode_worker_copies_direct_imports_at_arrival_unless_told_admission() -> None:
    assert options("decode").kv_copy_at == "arrival"
    assert options("decode", "--kv-copy-at", "admission").kv_copy_at == "admission"
    p = argparse.ArgumentParser(exit_on_error=False)
    add_worker_flags(p, "prefill")  # a decode worker's flag only
    with pytest.raises(SystemExit):
        p.parse_args(["--model", "m", "--kv-copy-at", "admission"])
