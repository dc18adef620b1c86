"""Mooncake publishes no KV events: the writer announces its blocks, and the router's index follows."""

from __future__ import annotations

import pytest
import torch

from kvstore.backend import open_store
from kvstore.block_key import KVLayout, block_keys
from kvstore.store_tier_events import AnnouncingStore
from router.kv_events import KVEventSubscriber
from router.prefix_index import PrefixIndex

pytestmark = pytest.mark.slow

LAYOUT = KVLayout("llama-test", "float32", 16)
KEYS = block_keys(list(range(16 * 6)), LAYOUT.model_fingerprint)  # one 6-block prompt
ROWS = torch.randn(6, 2, 2, 16, 2, 8)


def follow(store: AnnouncingStore) -> tuple[KVEventSubscriber, PrefixIndex]:
    index = PrefixIndex()
    subscriber = KVEventSubscriber(index, snapshot_timeout_s=2.0)
    subscriber.start()
    subscriber.add_publisher("kvstore", store.events_endpoint, store.snapshot_endpoint)
    assert subscriber.wait_for(lambda: subscriber.is_synced("kvstore"))
    return subscriber, index


def test_the_router_learns_store_blocks_from_the_writer_and_forgets_those_found_missing(mooncake_url: str):
    store = AnnouncingStore(open_store(mooncake_url), "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    subscriber, index = follow(store)
    try:
        assert all(r.ok for r in store.put_blocks(LAYOUT, {k: ROWS[i] for i, k in enumerate(KEYS)}).values())
        assert subscriber.wait_for(lambda: index.match(KEYS).get("kvstore") == 6)

        # Mooncake drops block 3 without telling anyone (eviction); a reader finds it missing
        store.backend.remove_blocks(LAYOUT, [KEYS[3]])
        out = torch.empty_like(ROWS)
        assert store.get_blocks_into(LAYOUT, KEYS, [out[i] for i in range(6)]) == [True] * 3 + [False] + [True] * 2
        assert subscriber.wait_for(lambda: index.match(KEYS).get("kvstore") == 3)

        # a router that joins later gets the announced set from a snapshot
        late_subscriber, late_index = follow(store)
        try:
            assert late_subscriber.wait_for(lambda: late_index.match(KEYS).get("kvstore") == 3)
            assert late_index.keys_of("kvstore") == set(KEYS) - {KEYS[3]}
        finally:
            late_subscriber.close()
    finally:
        subscriber.close()
        store.close()


def test_the_announced_set_is_bounded_and_the_oldest_blocks_are_announced_removed(mooncake_url: str):
    store = AnnouncingStore(open_store(mooncake_url), "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", max_announced=4)
    subscriber, index = follow(store)
    try:
        store.put_blocks(LAYOUT, {k: ROWS[i] for i, k in enumerate(KEYS)})
        assert subscriber.wait_for(lambda: index.keys_of("kvstore") == set(KEYS[2:]))
        assert store.blocks_exist(LAYOUT, KEYS) == [True] * 6  # still in the store: the router's view is only a hint
    finally:
        subscriber.close()
        store.close()
