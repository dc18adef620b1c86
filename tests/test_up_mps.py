"""`splitserve up --mps`: decode workers get their share of the SMs, and a machine without
MPS (or a bad share) gets a clear error before any process starts."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from splitserve import up


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    up.register(parser.add_subparsers())
    return parser.parse_args(["up", *flags])


def test_decode_workers_get_the_sm_share_and_prefill_workers_the_whole_gpu() -> None:
    args = parse("--mps", "--mps-decode-percent", "40", "--prefill", "1", "--decode", "2")
    comps = {c.name: c for c in up.plan_stack(args, "some-model")}
    assert comps["decode-0"].env == comps["decode-1"].env == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "40"}
    assert comps["prefill-0"].env == {} and comps["router"].env == {}
    assert all(c.env == {} for c in up.plan_stack(parse(), "some-model"))  # without --mps nothing changes


def test_prefill_workers_can_yield_the_sms_to_decode_kernels() -> None:
    args = parse("--mps", "--mps-prefill-priority", "1", "--prefill", "2", "--decode", "1")
    comps = {c.name: c for c in up.plan_stack(args, "some-model")}
    assert comps["prefill-0"].env == comps["prefill-1"].env == {"CUDA_MPS_CLIENT_PRIORITY": "1"}
    assert comps["decode-0"].env == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"}


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--mps", "--mps-decode-percent", "0"], "--mps-decode-percent must be 1-100, got 0"),
        (["--mps", "--ray"], "not with --ray"),
        (["--mps", "--mps-prefill-priority", "2"], "--mps-prefill-priority must be 0 (normal) or 1 (below normal), got 2"),
    ],
)
def test_bad_mps_flags_fail_before_anything_starts(flags: list[str], message: str, capsys) -> None:
    assert up.run_up(parse(*flags)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("nvidia-cuda-mps-control") is not None, reason="this machine has MPS")
def test_up_mps_without_the_nvidia_mps_daemon_says_what_is_missing(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "splitserve.cli", "up", "--mps", "--model", "smollm2", "--log-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "nvidia-cuda-mps-control is not on PATH" in done.stderr
    assert not list(tmp_path.glob("*.log"))  # no component was started
