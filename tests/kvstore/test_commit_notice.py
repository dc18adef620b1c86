"""A reader waiting for blocks that another writer is still putting is told at the commit, not by polling."""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import REGISTRY

from kvstore.block_key import KVLayout, block_keys
from kvstore.embedded import EmbeddedStore
from kvstore.sync_client import KVStoreClient

LAYOUT = KVLayout("commit-notice", "uint8", 16)


def exists_calls() -> float:
    return REGISTRY.get_sample_value("splitserve_kvstore_operation_seconds_count", {"component": "master", "op": "exists"}) or 0.0


def test_a_waiting_reader_is_answered_at_the_commit_without_polling():
    keys = block_keys(list(range(64)), LAYOUT.model_fingerprint)
    blocks = {k: np.full(4096, i, np.uint8) for i, k in enumerate(keys)}
    with EmbeddedStore(16 << 20) as store, KVStoreClient(store.address) as reader, KVStoreClient(store.address) as writer:
        polls = exists_calls()
        notice = reader.when_blocks_committed(LAYOUT, keys, timeout_s=10.0)
        time.sleep(0.3)
        assert not notice.done()  # nothing written yet: the master holds the answer
        assert all(r.ok for r in writer.put_blocks(LAYOUT, blocks).values())
        committed = time.monotonic()
        assert notice.result(timeout=5) == [True] * len(keys)
        assert time.monotonic() - committed < 1.0  # told at the commit, long before the 10 s timeout
        assert exists_calls() == polls  # and nobody asked the master whether the blocks were there yet


def test_a_wait_for_blocks_that_never_come_ends_at_its_timeout_with_what_exists():
    keys = block_keys(list(range(200, 232)), LAYOUT.model_fingerprint)
    with EmbeddedStore(16 << 20) as store, KVStoreClient(store.address) as client:
        client.put_blocks(LAYOUT, {keys[0]: np.zeros(4096, np.uint8)})
        start = time.monotonic()
        assert client.wait_for_blocks(LAYOUT, keys, timeout_s=0.5) == [True, False]
        assert 0.4 <= time.monotonic() - start < 3.0
