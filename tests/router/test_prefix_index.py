"""Prefix index: per-publisher longest held prefix of a block-key chain."""

from kvstore.block_key import block_keys
from router.prefix_index import PrefixIndex

FP = "test-model"


def chain(tokens: list[int]) -> list[bytes]:
    return block_keys(tokens, FP, block_size=4)


def test_match_returns_each_publishers_longest_held_prefix():
    keys = chain(list(range(40)))  # 10 blocks
    index = PrefixIndex()
    index.store("w1", keys[:10])
    index.store("w2", keys[:3])
    index.store("kvstore", keys[:6], medium="cpu")
    assert index.match(keys) == {"w1": 10, "w2": 3, "kvstore": 6}


def test_a_hole_in_the_chain_ends_the_prefix_even_if_later_blocks_are_held():
    keys = chain(list(range(32)))
    index = PrefixIndex()
    index.store("w1", keys[:2] + keys[3:])
    assert index.match(keys) == {"w1": 2}
    assert index.match(keys[1:]) == {"w1": 1}  # chain not starting at the root still walks


def test_removed_and_cleared_blocks_stop_matching():
    keys = chain(list(range(32)))
    index = PrefixIndex()
    index.store("w1", keys)
    index.store("w2", keys)
    index.remove("w1", keys[4:])
    index.clear("w2")
    assert index.match(keys) == {"w1": 4}
    assert index.num_blocks() == 4


def test_a_block_held_on_two_media_stays_until_removed_from_both():
    keys = chain(list(range(8)))
    index = PrefixIndex()
    index.store("w1", keys, medium="gpu")
    index.store("w1", keys, medium="cpu")
    index.remove("w1", keys, medium="gpu")
    assert index.match(keys) == {"w1": 2}
    index.remove("w1", keys, medium="cpu")
    assert index.match(keys) == {}


def test_snapshot_replaces_the_publishers_whole_state():
    keys = chain(list(range(32)))
    index = PrefixIndex()
    index.store("w1", keys)
    index.replace("w1", {"gpu": keys[:1], "cpu": keys[1:3]})
    assert index.match(keys) == {"w1": 3}
    assert index.keys_of("w1") == set(keys[:3])


def test_unrelated_prompt_matches_nothing():
    index = PrefixIndex()
    index.store("w1", chain(list(range(16))))
    assert index.match(chain(list(range(100, 116)))) == {}
    assert index.match([]) == {}


def test_a_publisher_that_joins_after_another_was_cleared_holds_only_its_own_blocks():
    keys = chain(list(range(32)))
    index = PrefixIndex()
    index.store("gone", keys)
    index.store("stays", keys[:2])
    index.clear("gone")  # its slot is reused by the next publisher
    index.store("new", keys[:1])
    assert index.match(keys) == {"stays": 2, "new": 1}
    assert index.num_blocks() == 2 and index.keys_of("gone") == set()


def test_a_new_publisher_reusing_a_cleared_publishers_bit_is_reported_under_its_own_name():
    keys = chain(list(range(16)))
    index = PrefixIndex()
    index.store("w1", keys)
    index.store("w2", keys[:2])
    assert index.match(keys) == {"w1": 4, "w2": 2}
    index.clear("w1")
    index.store("w3", keys[:3])  # takes w1's freed bit
    assert index.match(keys) == {"w3": 3, "w2": 2}


def test_sole_blocks_count_what_only_that_publisher_holds_through_stores_removals_and_clears():
    keys = chain(list(range(40)))  # 10 blocks
    index = PrefixIndex()
    index.store("w1", keys)
    assert index.num_sole_blocks_of("w1") == 10
    index.store("w2", keys[:4])
    index.store("w2", keys[:4], medium="cpu")  # a second medium is not a second copy
    assert (index.num_sole_blocks_of("w1"), index.num_sole_blocks_of("w2")) == (6, 0)
    index.remove("w1", keys[:2])  # w2 now holds the only copy of those two
    assert (index.num_sole_blocks_of("w1"), index.num_sole_blocks_of("w2")) == (6, 2)
    index.clear("w1")
    assert (index.num_sole_blocks_of("w1"), index.num_sole_blocks_of("w2")) == (0, 4)
    index.store("w3", keys[4:])
    assert index.num_sole_blocks_of("w3") == 6  # a reused publisher bit starts from zero


def test_eviction_cost_is_zero_until_a_publisher_evicts_the_only_copy_of_a_block():
    keys = chain(list(range(80)))  # 20 blocks
    index = PrefixIndex()
    index.store("w1", keys)
    index.store("w2", keys[:10])
    assert index.eviction_estimates_of(["w1", "w2", "unknown"])[0] == [0.0, 0.0, 0.0]  # nothing evicted: free space
    index.remove("w2", keys[:10])  # copies w1 still holds
    index.remove("w1", keys[15:])  # the only copies: lost from the cluster
    assert index.eviction_estimates_of(["w1", "w2", "unknown"])[0] == [1.0, 0.0, 0.0]


def test_a_publisher_evicting_recently_stored_or_used_blocks_costs_more_than_one_evicting_old_ones():
    old, young = chain(list(range(40))), chain(list(range(1000, 1040)))
    index = PrefixIndex()
    index.store("cold", old)
    index.store("hot", young[:5])
    index.store("later", chain(list(range(2000, 2400))))  # the index's clock moves on
    index.store("hot", young[5:])
    index.remove("cold", old[5:])  # stored long ago, never used since
    index.remove("hot", young[5:])  # stored just now
    cold, hot = index.eviction_estimates_of(["cold", "hot"])[1]
    assert hot > cold > 0

    index.touch("cold", old[:5])  # a request hit them just now
    index.remove("cold", old[:5])
    index.remove("hot", young[:5])
    cold_after, hot_after = index.eviction_estimates_of(["cold", "hot"])[1]
    assert cold_after > cold and hot_after < hot


def test_copy_notices_tell_a_holder_when_another_starts_or_stops_holding_its_block():
    keys = chain(list(range(12)))  # 3 blocks
    index = PrefixIndex()
    notices: list[tuple[str, bytes, bool]] = []
    index.on_sharing = lambda publisher, key, shared: notices.append((publisher, key, shared))
    index.store("w1", keys)
    assert notices == []  # the only copy
    index.store("w2", keys[:2])
    assert sorted(notices) == sorted([("w1", k, True) for k in keys[:2]] + [("w2", k, True) for k in keys[:2]])
    notices.clear()
    index.store("w3", keys[:1])  # a third copy: w3's is shared, nothing changes for w1 and w2
    assert notices == [("w3", keys[0], True)]
    notices.clear()
    index.remove("w1", keys)
    assert notices == [("w2", keys[1], False)]  # w2 now holds the only copy of block 1; block 0 has w3 too
