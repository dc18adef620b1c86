"""One byte-size parser behind every flag: units as written (GiB = 2^30, GB = 10^9)."""

from __future__ import annotations

import argparse

import pytest

from contracts.sizes import parse_size
from engine.server.worker_options import add_worker_flags
from kvstore.cli import register


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        ("1GiB", 1 << 30),
        ("1GB", 10**9),
        ("1gb", 10**9),
        ("1.5MiB", 3 << 19),
        ("2Gi", 2 << 30),
        ("4 kB", 4000),
        ("8KiB", 8192),
        ("1TB", 10**12),
        ("0", 0),
    ],
)
def test_sizes_mean_what_their_unit_says(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1G", "12 bananas", "", "-1GiB", "GiB"])
def test_ambiguous_or_malformed_sizes_are_refused_with_examples(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="e.g. 512MiB"):
        parse_size(text)


def test_worker_and_store_flags_agree_on_a_gigabyte() -> None:
    worker = argparse.ArgumentParser()
    add_worker_flags(worker, "prefill")
    store = argparse.ArgumentParser()
    register(store.add_subparsers())
    w = worker.parse_args(["--model", "m", "--kv-cache-bytes", "1GB", "--store-write-budget", "1GiB"])
    s = store.parse_args(["kvstore-node", "--master", "h:1", "--capacity", "1GB"])
    assert w.kv_cache_bytes == s.capacity == 10**9
    assert w.store_write_budget == 1 << 30
