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


def test_with_shared_first_a_copy_another_worker_holds_goes_before_older_blocks_of_its_own():
    cache = BlockCache(6, shared_first=True)
    old, copy = [b"o1", b"o2", b"o3"], [b"c1", b"c2", b"c3"]
    for c in (old, copy):
        cache.allocate(c, 0)
        cache.release(c, 0)
    for key in copy:
        cache.mark_shared(key)  # another worker announced these blocks
    assert cache.allocate([b"n1", b"n2"], 0).evicted == [b"c3", b"c2"]  # deepest first
    cache.mark_sole(b"c1")  # that worker evicted its copy: ours is the only one now
    assert cache.allocate([b"n3"], 0).evicted == [b"o3"]  # plain LRU again
    assert cache.match(copy) == 1


def test_with_shared_first_a_shared_block_is_kept_while_a_block_only_this_cache_holds_continues_it():
    cache = BlockCache(5, shared_first=True)
    other, prefix, tail = [b"x1", b"x2"], [b"p1", b"p2"], [b"t1"]
    for c in (other, prefix + tail):  # `other` is the least recently used
        cache.allocate(c, 0)
        cache.release(c, 0)
    for key in prefix:
        cache.mark_shared(key)  # another worker holds the prefix, not our tail
    assert cache.allocate([b"n1"], 0).evicted == [b"x2"]  # not p2: t1 would be lost without it
    assert cache.match(prefix + tail) == 3
    assert cache.allocate([b"n2", b"n3"], 0).evicted == [b"x1", b"t1"]
    assert cache.allocate([b"n4"], 0).evicted == [b"p2"]  # now a shared leaf


def test_without_shared_first_copy_notices_change_nothing():
    cache = BlockCache(4)
    old, copy = [b"o1", b"o2"], [b"c1", b"c2"]
    for c in (old, copy):
        cache.allocate(c, 0)
        cache.release(c, 0)
    for key in copy:
        cache.mark_shared(key)
    assert cache.allocate([b"n1"], 0).evicted == [b"o2"]
