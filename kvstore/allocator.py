"""Free-list allocator over one node's segment, with coalescing of neighbours.

The master keeps one per storage node, so it always knows used / capacity.
Free ranges are kept sorted by offset (for O(log n) coalescing on free) and
allocation is best-fit, which keeps large holes intact for large objects.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

ALIGNMENT = 256  # keeps shared-memory tensor views aligned for any dtype / vector load


class OutOfSpace(Exception):
    """No free range is large enough (after alignment)."""


class BadFree(ValueError):
    """A free() of a range that is not allocated: a bookkeeping bug."""


def align_up(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


@dataclass(slots=True)
class SegmentAllocator:
    capacity: int
    _starts: list[int] = field(default_factory=list)  # sorted offsets of free ranges
    _free: dict[int, int] = field(default_factory=dict)  # offset -> length
    _used: dict[int, int] = field(default_factory=dict)  # offset -> aligned length
    used: int = 0  # bytes handed out (aligned)

    def __post_init__(self) -> None:
        usable = self.capacity // ALIGNMENT * ALIGNMENT
        if usable > 0:
            self._starts.append(0)
            self._free[0] = usable

    @property
    def free_bytes(self) -> int:
        return self.capacity // ALIGNMENT * ALIGNMENT - self.used

    @property
    def largest_free(self) -> int:
        return max(self._free.values(), default=0)

    def allocate(self, size: int) -> int:
        """Offset of a fresh range of at least ``size`` bytes; raises OutOfSpace."""
        if size <= 0:
            raise ValueError(f"allocation size must be positive, got {size}")
        need = align_up(size)
        best, best_len = -1, 0
        for start, length in self._free.items():
            if length >= need and (best < 0 or length < best_len):
                best, best_len = start, length
                if length == need:
                    break
        if best < 0:
            raise OutOfSpace(f"no free range of {need} bytes (free {self.free_bytes}, largest {self.largest_free})")
        del self._free[best]
        i = bisect.bisect_left(self._starts, best)
        del self._starts[i]
        if best_len > need:
            rest = best + need
            self._free[rest] = best_len - need
            self._starts.insert(i, rest)
        self._used[best] = need
        self.used += need
        return best

    def free(self, offset: int) -> None:
        length = self._used.pop(offset, None)
        if length is None:
            raise BadFree(f"offset {offset} is not allocated")
        self.used -= length
        i = bisect.bisect_left(self._starts, offset)
        # merge with the following free range
        if i < len(self._starts) and self._starts[i] == offset + length:
            length += self._free.pop(self._starts[i])
            del self._starts[i]
        # merge with the preceding free range
        if i > 0:
            prev = self._starts[i - 1]
            if prev + self._free[prev] == offset:
                self._free[prev] += length
                return
        self._starts.insert(i, offset)
        self._free[offset] = length
