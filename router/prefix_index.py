"""Global prefix index: which publisher (worker id or "kvstore") holds which KV blocks.

Fed by KV events (router/kv_event_subscriber.py). A lookup walks a request's block-key chain
once and returns, for every publisher, how many leading blocks it holds. Because a
block key commits to its whole prefix (kvstore/block_key.py), holding block i means
holding the prefix up to i only if blocks 0..i-1 are held too, so the walk stops for
a publisher at its first missing block.

A publisher may hold a key on several media (gpu, cpu, ...); the key counts as held
until it has been removed from every medium.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import cast

from kvstore.block_key import BlockKey

# The publisher id of the store tier: our store's master publishes under it, and blocks that
# prefill workers announce with the "store" medium (Mooncake, kvstore/store_tier_events.py)
# are filed under it too, whoever announced them.
STORE_PUBLISHER = "kvstore"
_MASK_CACHE_SIZE = 4096  # holder sets whose publishers PrefixIndex.match remembers
# A publisher's entry for a key is (stamp << _MEDIA_BITS) | media mask: the stamp is the index's
# clock when the key was stored (or last touched), kept in the same int to cost no second dict.
_MEDIA_BITS = 8
_MEDIA_MASK = (1 << _MEDIA_BITS) - 1
_EVICTION_ALPHA = 1 / 512  # per removed block: an eviction estimate follows the last ~500 blocks


@dataclass(slots=True)
class Evictions:
    """A moving estimate of what one publisher's removals (evictions) lose.

    ``sole_share``: the share of removed blocks that were the only copy in the cluster;
    ``sole_age``: their mean age at removal, in blocks stored cluster-wide since they were
    stored or last touched (the index's clock: no wall time, so replays on virtual time agree).
    """

    sole_share: float = 0.0
    sole_age: float = 0.0
    removed: int = 0

    def observe(self, sole: bool, age: int) -> None:
        a = max(_EVICTION_ALPHA, 1 / (self.removed + 1))  # a plain mean until the window fills
        self.removed += 1
        self.sole_share += a * (sole - self.sole_share)
        if sole:
            self.sole_age += (a if self.sole_age else 1.0) * (age - self.sole_age)


class PrefixIndex:
    """Thread-safe: events apply from the subscriber thread, lookups from the event loop.

    Each publisher gets a bit; a key maps to the int mask of its holders. Ints are not
    tracked by the garbage collector, so a million indexed blocks add no GC pauses (a set
    per key made a full collection walk every one of them), and a lookup intersects masks.
    """

    def __init__(self) -> None:
        self._holders: dict[BlockKey, int] = {}  # key -> mask of the publishers holding it
        # publisher -> key -> (stamp << _MEDIA_BITS) | bitmask of the media holding it
        self._held: dict[str, dict[BlockKey, int]] = {}
        self._bits: dict[str, int] = {}  # publisher -> its bit in _holders' masks
        self._names: dict[int, str] = {}  # bit -> publisher
        self._free_bits: list[int] = []  # bits of cleared publishers, reused before new ones
        self._media: dict[str, int] = {}
        self._mask_names: dict[int, tuple[str, ...]] = {}  # mask -> its publishers; cleared when a bit changes hands
        self._sole: dict[int, int] = {}  # bit -> keys only that publisher holds
        self._clock = 0  # blocks stored so far, cluster-wide: the clock of block ages
        self._evictions: dict[int, Evictions] = {}  # bit -> what its removals lose
        self._all_evictions = Evictions()  # every publisher's removals together
        # Copy notices: called (publisher, key, shared) when another publisher starts or stops
        # holding a key this publisher holds too (called under the lock; keep it short)
        self.on_sharing: Callable[[str, BlockKey, bool], None] | None = None
        self._lock = threading.Lock()

    def _medium_bit(self, medium: str) -> int:
        bit = self._media.get(medium)
        if bit is None:
            if len(self._media) == _MEDIA_BITS:
                raise ValueError(f"more than {_MEDIA_BITS} KV media announced; medium {medium!r} has no bit left")
            bit = 1 << len(self._media)
            self._media[medium] = bit
        return bit

    def _publisher_bit(self, publisher: str) -> int:
        bit = self._bits.get(publisher)
        if bit is None:
            bit = self._free_bits.pop() if self._free_bits else 1 << len(self._bits)
            self._bits[publisher] = bit
            self._names[bit] = publisher
            self._mask_names.clear()
        return bit

    def store(self, publisher: str, keys: Iterable[BlockKey], medium: str = "gpu") -> None:
        with self._lock:
            bit = self._medium_bit(medium)
            me = self._publisher_bit(publisher)
            held = self._held.setdefault(publisher, {})
            holders = self._holders
            sole = self._sole
            clock = self._clock
            notify = self.on_sharing
            for key in keys:
                entry = held.get(key, 0)
                if not entry:
                    clock += 1
                    entry = clock << _MEDIA_BITS
                    before = holders.get(key, 0)
                    holders[key] = before | me
                    if not before:
                        sole[me] = sole.get(me, 0) + 1
                    elif not before & (before - 1):  # its one holder now shares it
                        sole[before] -= 1
                        if notify is not None:
                            notify(self._names[before], key, True)
                    if before and notify is not None:
                        notify(publisher, key, True)
                held[key] = entry | bit
            self._clock = clock

    def remove(self, publisher: str, keys: Iterable[BlockKey], medium: str = "gpu") -> None:
        with self._lock:
            held = self._held.get(publisher)
            if held is None:
                return
            bit = self._medium_bit(medium)
            me = self._bits[publisher]
            evictions = self._evictions.get(me)
            if evictions is None:
                evictions = self._evictions[me] = Evictions()
            everyone, clock = self._all_evictions, self._clock
            for key in keys:
                entry = held.get(key)
                if entry is None:
                    continue
                entry &= ~bit
                if entry & _MEDIA_MASK:
                    held[key] = entry
                    continue
                del held[key]
                sole, age = self._drop_holder(key, me), clock - (entry >> _MEDIA_BITS)
                evictions.observe(sole, age)
                everyone.observe(sole, age)

    def touch(self, publisher: str, keys: Iterable[BlockKey]) -> None:
        """Restamp the keys the publisher holds as used now (a request was routed to hit them),
        as the worker's LRU cache does: their age at eviction then counts from their last use."""
        with self._lock:
            held = self._held.get(publisher)
            if held is None:
                return
            now = self._clock << _MEDIA_BITS
            keys = list(keys)
            found = list(map(held.get, keys))  # C-level; a prefix ends at the first key not held
            if None in found:
                del found[found.index(None) :]
            entries = cast("list[int]", found)
            held.update(zip(keys, [now | (entry & _MEDIA_MASK) for entry in entries]))

    def clear(self, publisher: str) -> None:
        """Forget every block of a publisher (AllBlocksCleared, or the publisher left)."""
        with self._lock:
            held = self._held.pop(publisher, {})
            me = self._bits.pop(publisher, 0)
            for key in held:
                self._drop_holder(key, me)
            if me:  # no key carries its bit any more
                del self._names[me]
                self._sole.pop(me, None)
                self._evictions.pop(me, None)
                self._free_bits.append(me)
                self._mask_names.clear()

    def replace(self, publisher: str, by_medium: dict[str, list[BlockKey]]) -> None:
        """Install a snapshot as the publisher's whole state."""
        self.clear(publisher)
        with self._lock:
            self._publisher_bit(publisher)
            self._held.setdefault(publisher, {})
        for medium, keys in by_medium.items():
            self.store(publisher, keys, medium)

    def _drop_holder(self, key: BlockKey, me: int) -> bool:
        """Drops ``me`` from the key's holders; whether it held the only copy."""
        before = self._holders.get(key, 0)
        mask = before & ~me
        if mask:
            self._holders[key] = mask
            if not mask & (mask - 1):  # one holder left: its copy is now the only one
                self._sole[mask] = self._sole.get(mask, 0) + 1
                if self.on_sharing is not None:
                    self.on_sharing(self._names[mask], key, False)
        else:
            self._holders.pop(key, None)
        if before == me:
            self._sole[me] -= 1
            return True
        return False

    def match(self, chain: Sequence[BlockKey]) -> dict[str, int]:
        """Number of leading blocks of ``chain`` each publisher holds (publishers with 0 omitted).

        O(len(chain)): one dict lookup and one mask intersection per block, whatever the
        index holds."""
        result: dict[str, int] = {}
        if not chain:
            return result
        holders, publishers_in = self._holders, self._publishers_in
        with self._lock:
            alive = holders.get(chain[0], 0)
            depth = 1
            for key in chain[1:]:
                if not alive:
                    break
                kept = alive & holders.get(key, 0)
                if kept != alive:
                    result.update(dict.fromkeys(publishers_in(alive ^ kept), depth))
                    alive = kept
                depth += 1
            if alive:
                result.update(dict.fromkeys(publishers_in(alive), depth))
        return result

    def _publishers_in(self, mask: int) -> tuple[str, ...]:
        """The publishers whose bits ``mask`` has; cached, as the same holder sets recur."""
        names = self._mask_names.get(mask)
        if names is None:
            if len(self._mask_names) >= _MASK_CACHE_SIZE:
                self._mask_names.clear()
            found, bits = [], mask
            while bits:
                low = bits & -bits
                found.append(self._names[low])
                bits ^= low
            names = self._mask_names[mask] = tuple(found)
        return names

    def publishers(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def keys_of(self, publisher: str) -> set[BlockKey]:
        with self._lock:
            return set(self._held.get(publisher, {}))

    def num_blocks_of(self, publisher: str) -> int:
        """Blocks one publisher holds (on any medium)."""
        return len(self._held.get(publisher, ()))

    def sole_blocks_of(self, publishers: Sequence[str]) -> list[int]:
        """``num_sole_blocks_of`` for each publisher, in one pass (a scheduling decision's column)."""
        return list(map(self._sole.get, map(self._bits.get, publishers, repeat(0)), repeat(0)))  # C-level maps

    def num_sole_blocks_of(self, publisher: str) -> int:
        """Blocks no other publisher holds: evicting one of them loses its KV from the cluster."""
        bit = self._bits.get(publisher)
        return self._sole.get(bit, 0) if bit else 0

    def eviction_estimates_of(self, publishers: Sequence[str], max_factor: float = 4.0) -> tuple[list[float], list[float]]:
        """Two columns (a scheduling decision's) on what each publisher's next evictions lose:

        ``shares``: the share of its recent removals that lost the only copy of a block (0 for a
        publisher that has removed nothing: it has free space);
        ``youth``: how much younger its lost sole copies were than the cluster's, ``cluster mean
        age / its mean age`` capped at ``max_factor`` (1 where it has lost no sole copy yet, 0
        where it has removed nothing)."""
        cluster_age = self._all_evictions.sole_age
        bit_of, evictions_of = self._bits.get, self._evictions.get
        shares, youth = [], []
        for p in publishers:
            e = evictions_of(bit_of(p, 0))
            if e is None or not e.removed:
                shares.append(0.0)
                youth.append(0.0)
            else:
                shares.append(e.sole_share)
                youth.append(min(max_factor, cluster_age / e.sole_age) if e.sole_age else 1.0)
        return shares, youth

    def num_blocks(self) -> int:
        """Distinct blocks in the index (the `index_blocks` gauge)."""
        return len(self._holders)
