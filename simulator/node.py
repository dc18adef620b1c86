"""What every simulated worker has: identity, profile, clock, block cache, KV-event publisher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from contracts.kv_events import BlockRemoved, BlockStored, KVEvent
from kvstore.block_key import BlockKey, block_keys
from kvstore.event_publisher import KVEventPublisher
from simulator.block_cache import BlockCache
from simulator.clock import SimClock
from simulator.profile import Profile

# Output token ids: a small range every tokenizer has, so that the router can detokenize them.
_OUTPUT_TOKEN_BASE, _OUTPUT_TOKEN_RANGE = 200, 50


class EventSink(Protocol):
    """Where a worker's KV events go: a ZMQ publisher, or straight into an index (replay)."""

    def publish(self, events: list[KVEvent]) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class SimNode:
    worker_id: str
    role: str  # "prefill" | "decode"
    profile: Profile
    clock: SimClock
    cache: BlockCache
    fingerprint: str
    block_size: int
    publisher: EventSink | None = None

    @classmethod
    def create(cls, worker_id: str, role: str, profile: Profile, clock: SimClock, fingerprint: str,
               block_size: int, host: str = "127.0.0.1", capacity_blocks: int | None = None) -> SimNode:  # fmt: skip
        cache = BlockCache(capacity_blocks or profile.kv_capacity_blocks(block_size))
        node = cls(worker_id, role, profile, clock, cache, fingerprint, block_size)
        node.publisher = KVEventPublisher(f"tcp://{host}:0", f"tcp://{host}:0", worker_id, cache.snapshot)
        return node

    def chain(self, prompt: list[int], cache_salt: str = "") -> list[BlockKey]:
        return block_keys(prompt, self.fingerprint, self.block_size, cache_salt)

    def announce_stored(self, keys: list[BlockKey]) -> None:
        if keys and self.publisher is not None:
            self.publisher.publish([BlockStored(keys=keys, block_size=self.block_size, medium="gpu")])

    def announce_removed(self, keys: list[BlockKey]) -> None:
        if keys and self.publisher is not None:
            self.publisher.publish([BlockRemoved(keys=keys, medium="gpu")])

    @staticmethod
    def token_at(position: int) -> int:
        """The simulated output token at ``position``: depends on the position only, so that a
        disaggregated answer equals the colocated one token for token, as on the real stack."""
        return _OUTPUT_TOKEN_BASE + position % _OUTPUT_TOKEN_RANGE

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
