"""Which free block the block manager hands out next: never-cached blocks first, then a decode
worker's copies of imported KV (the prefill worker keeps its own), then the least recently used."""

from __future__ import annotations

from contracts.sampling import SamplingParams
from engine.block_manager import BlockManager
from engine.sequence import Sequence

BS = 4


def finished(manager: BlockManager, rid: str, tokens: list[int], imported: tuple[int, int] = (0, 0)) -> list[int]:
    """Run a sequence of these tokens through allocation and caching, release it; its block ids."""
    seq = Sequence(rid, list(tokens), len(tokens), SamplingParams())
    manager.allocate(seq, len(tokens))
    seq.num_computed_tokens = len(tokens)
    manager.commit_full_blocks(seq)
    seq.imports_evict_first, seq.imported_blocks = imported != (0, 0), imported
    blocks = list(seq.block_table)
    manager.release(seq)
    return blocks


def cached_after(manager: BlockManager, n: int) -> set[int]:
    """Allocate n blocks for a newcomer; the ids of the blocks that are still cached afterwards."""
    newcomer = Sequence("new", list(range(900, 900 + n * BS)), n * BS, SamplingParams())
    manager.allocate(newcomer, n * BS)
    return {b.block_id for b in manager.blocks if b.key is not None}


def test_uncached_blocks_go_before_any_cached_block() -> None:
    m = BlockManager(num_blocks=8, block_size=BS, fingerprint="f")
    local = finished(m, "a", list(range(1, 9)))  # 2 cached blocks
    assert cached_after(m, 6) == set(local)  # the 6 never-used blocks were handed out first


def test_imported_copies_are_evicted_before_older_local_blocks_deepest_first() -> None:
    m = BlockManager(num_blocks=6, block_size=BS, fingerprint="f")
    local = finished(m, "local", list(range(1, 9)))  # 2 blocks computed here, used first (older)
    imported = finished(m, "imported", list(range(20, 33)), imported=(0, 4))  # 3 full blocks + a partial tail
    assert m.num_free == 6
    # the partial tail (uncached) goes first, then the import's deepest block, then the next one
    assert cached_after(m, 2) == set(local) | set(imported[:2])
    assert cached_after(m, 1) == set(local) | set(imported[:1])


def test_without_the_flag_release_order_is_least_recently_used() -> None:
    m = BlockManager(num_blocks=6, block_size=BS, fingerprint="f")
    finished(m, "local", list(range(1, 9)))
    later = finished(m, "later", list(range(20, 33)))  # an ordinary request, released after `local`
    assert cached_after(m, 3) == set(later[:3])  # the tail (uncached), then `local`'s two blocks went


def shared_first_manager(num_blocks: int) -> BlockManager:
    return BlockManager(num_blocks=num_blocks, block_size=BS, fingerprint="f", shared_first=True)


def keys_of(manager: BlockManager, block_ids: list[int]) -> list:
    return [manager.blocks[b].key for b in block_ids]


def test_with_shared_first_a_copy_another_worker_holds_is_evicted_before_older_blocks_deepest_first() -> None:
    m = shared_first_manager(4)
    local = finished(m, "local", list(range(1, 9)))  # older, only this worker holds it
    copy = finished(m, "copy", list(range(20, 28)))
    m.mark_shared(keys_of(m, copy))  # the router's copy notice: another worker announced these
    assert cached_after(m, 1) == set(local) | set(copy[:1])
    m.mark_sole(keys_of(m, copy[:1]))  # that worker evicted its copy: ours is the only one now
    assert cached_after(m, 1) == set(local[:1]) | set(copy[:1])  # least recently used again


def test_with_shared_first_a_shared_prefix_stays_while_a_block_only_this_worker_holds_continues_it() -> None:
    m = shared_first_manager(4)
    finished(m, "other", list(range(100, 104)))  # 1 block, the least recently used
    conversation = finished(m, "conversation", list(range(1, 13)))  # 3 blocks
    m.mark_shared(keys_of(m, conversation[:2]))  # another worker holds the first two, not the third
    assert cached_after(m, 1) == set(conversation)  # `other` went: the prefix still leads to block 3


def test_an_imported_copy_that_becomes_the_only_one_is_kept_as_recently_used() -> None:
    m = shared_first_manager(6)
    finished(m, "local", list(range(1, 9)))  # older than the import, only this worker holds it
    imported = finished(m, "imported", list(range(20, 28)), imported=(0, 2))  # put first on release
    m.mark_sole(keys_of(m, imported))  # the prefill worker evicted its copy
    assert cached_after(m, 4) == set(imported)  # the 2 never-cached blocks went first, then `local`
