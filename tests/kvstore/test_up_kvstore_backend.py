"""`splitserve up --kvstore-backend mooncake` plans Mooncake's programs and hands workers its URL."""

from __future__ import annotations

import argparse

import pytest

from kvstore.mooncake_url import MooncakeURL
from splitserve import up


def plan(*flags: str) -> dict[str, up.Component]:
    parser = argparse.ArgumentParser()
    up.register(parser.add_subparsers())
    args = parser.parse_args(["up", "--model", "unused", *flags])
    return {c.name: c for c in up.plan_stack(args, "unused")}


def test_mooncake_backend_runs_mooncake_programs_and_workers_get_its_url():
    comps = plan("--kvstore-backend", "mooncake", "--kvstore-capacity", "64MiB")
    assert comps["kvstore-master"].argv[0].endswith("mooncake_master")
    assert comps["kvstore-node"].argv[0].endswith("mooncake_client")
    assert f"--global_segment_size={64 << 20}" in comps["kvstore-node"].argv
    for worker in ("prefill-0", "decode-0"):
        argv = comps[worker].argv
        url = MooncakeURL.parse(argv[argv.index("--kvstore") + 1])
        assert url.master == f"127.0.0.1:{comps['kvstore-master'].tcp_port}"
    assert "--kvstore-events" not in comps["router"].argv  # Mooncake publishes none of our events


def test_our_store_stays_the_default():
    comps = plan()
    assert "kvstore-master" in comps["kvstore-master"].argv
    argv = comps["decode-0"].argv
    assert argv[argv.index("--kvstore") + 1] == f"127.0.0.1:{comps['kvstore-master'].grpc_port}"
    assert "--kvstore-events" in comps["router"].argv


def test_a_mooncake_segment_below_its_minimum_is_refused():
    with pytest.raises(ValueError, match="at least 16 MiB"):
        plan("--kvstore-backend", "mooncake", "--kvstore-capacity", "1MiB")
