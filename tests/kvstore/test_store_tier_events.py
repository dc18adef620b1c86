"""Mooncake publishes no KV events: the writer announces its blocks, and the router's index follows."""

from __future__ import annotations

import pytest
import torch

from kvstore.backend import open_store
from kvstore.block_key import KVLayout, block_keys
from kvstore.store_tier_events import AnnouncingStore
from router.kv_event_subscriber import KVEventSubscriber
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


def test_a_prefill_workers_announcements_on_its_own_stream_are_filed_under_the_store_tier(mooncake_url: str):
    """What a serving prefill worker does (kv_transfer/store.py): Mooncake writes announced on the
    worker's own event stream, beside its GPU blocks; the router files "store" blocks under the
    store tier (scheduler's store hit) and the rest under the worker."""
    from contracts.kv_events import BlockStored
    from kvstore.event_publisher import KVEventPublisher

    gpu_keys = block_keys(list(range(1000, 1000 + 16 * 2)), LAYOUT.model_fingerprint)
    worker_state: dict[str, list] = {"gpu": list(gpu_keys)}
    store: AnnouncingStore | None = None

    def snapshot() -> dict[str, list]:
        return {**worker_state, **(store.snapshot() if store is not None else {})}

    publisher = KVEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "prefill-0", snapshot)
    store = AnnouncingStore(open_store(mooncake_url), publisher=publisher)
    index = PrefixIndex()
    subscriber = KVEventSubscriber(index, snapshot_timeout_s=2.0)
    subscriber.start()
    late = KVEventSubscriber(late_index := PrefixIndex(), snapshot_timeout_s=2.0)
    try:
        subscriber.add_publisher("prefill-0", publisher.pub_endpoint, publisher.snapshot_endpoint)
        assert subscriber.wait_for(lambda: subscriber.is_synced("prefill-0"))
        publisher.publish([BlockStored(keys=list(gpu_keys), block_size=16, medium="gpu")])
        assert all(r.ok for r in store.put_blocks(LAYOUT, {k: ROWS[i] for i, k in enumerate(KEYS)}).values())
        assert subscriber.wait_for(lambda: index.match(KEYS) == {"kvstore": 6})
        assert index.match(gpu_keys) == {"prefill-0": 2}

        late.start()  # a router that joins later: the worker's snapshot carries both tiers
        late.add_publisher("prefill-0", publisher.pub_endpoint, publisher.snapshot_endpoint)
        assert late.wait_for(lambda: late_index.match(KEYS) == {"kvstore": 6})
        assert late_index.match(gpu_keys) == {"prefill-0": 2}
    finally:
        late.close()
        subscriber.close()
        store.close()
        publisher.close()
