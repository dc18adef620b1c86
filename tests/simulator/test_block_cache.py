"""The simulated KV cache: block-exact capacity, prefix hits, LRU eviction that spares running requests."""

import pytest

from kvstore.block_key import block_keys
from simulator.block_cache import BlockCache


def chain(first: int, blocks: int) -> list[bytes]:
    return block_keys(list(range(first, first + 16 * blocks)), "fp", 16)


def test_a_released_prompt_stays_cached_and_is_a_prefix_hit():
    cache = BlockCache(100)
    a = chain(0, 10)
    first = cache.allocate(a, 1)
    assert (first.hit_blocks, len(first.new_keys), first.evicted) == (0, 10, [])
    cache.release(a, 1)
    assert cache.used_blocks == 10 and cache.active_blocks == 0
    again = cache.allocate(a[:6] + chain(10_000, 2), 0)
    assert again.hit_blocks == 6 and len(again.new_keys) == 2


def test_eviction_takes_the_least_recently_used_chain_tail_first():
    cache = BlockCache(20)
    a, b = chain(0, 10), chain(50_000, 10)
    for c in (a, b):
        cache.allocate(c, 0)
        cache.release(c, 0)
    cache.allocate(a, 0)  # touch a: b is now the least recently used
    cache.release(a, 0)
    evicted = cache.allocate(chain(90_000, 4), 0).evicted
    assert evicted == list(reversed(b))[:4]  # b's deepest blocks go first
    assert cache.match(b) == 6 and cache.match(a) == 10


def test_blocks_of_running_requests_are_never_evicted_and_a_full_cache_refuses():
    cache = BlockCache(20)
    running = chain(0, 15)
    cache.allocate(running, 0)
    assert cache.allocate(chain(50_000, 6), 0) is None  # would need a running request's blocks
    assert cache.match(running) == 15
    assert cache.allocate(chain(50_000, 5), 0) is not None


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        BlockCache(0)


def test_blocks_released_as_evict_first_are_evicted_before_older_ones():
    cache = BlockCache(4)
    old, copy = [b"o1", b"o2"], [b"c1", b"c2"]
    cache.allocate(old, 0)
    cache.release(old, 0)
    cache.allocate(copy, 0)
    cache.release(copy, 0, evict_first=set(copy))  # newer, but a copy another worker holds
    assert cache.allocate([b"n1"], 0).evicted == [b"c2"]  # the copy's deepest block goes first
    assert cache.match(old) == 2 and cache.match(copy) == 1
