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
