"""Which memory the guest has accepted, in ``accept.chunk`` units (workloads.md §1.2 lazy acceptance).

The buddy allocator accepts one MAX_PAGE_ORDER block (4 MiB) at a time. Lazy acceptance is modelled as a
frontier moving up from GPA 0 (``zone->unaccepted_pages`` is filled in physical order and taken from the
head); allocations elsewhere (memblock for swiotlb or GHCB pages, a DMA buffer) accept their own chunks
first, out of order, and the frontier skips them later. Every chunk is accepted exactly once, so a guest
that accepts everything accepts ``guest_mem / chunk`` chunks (16,384 for 64 GiB, §6). Only out-of-order
ranges are stored, so memory follows the number of allocations, not the guest size.

Simplification: a memblock allocation really accepts whole 2 MiB bitmap *units* (``accept.unit``), not
4 MiB chunks, so a GHCB page accepts 2 MiB where the model accepts 4 MiB; counting every acceptance in chunks keeps §6's
"one descriptor and one exit per chunk" exact.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator


class Acceptance:
    """Accepted memory: ``[0, frontier)`` plus a few out-of-order chunk-aligned ranges above it."""

    def __init__(self, ram_end: int, chunk: int, enabled: bool = True) -> None:
        self.ram_end = ram_end
        self.chunk = chunk
        self.enabled = enabled
        self.frontier = 0
        self.accepted = 0  # bytes
        self._starts: list[int] = []
        self._ends: list[int] = []

    def _covered(self, start: int) -> int | None:
        """End of the out-of-order range containing ``start``, if any."""
        i = bisect_right(self._starts, start) - 1
        return self._ends[i] if i >= 0 and self._ends[i] > start else None

    def _record(self, start: int, end: int) -> None:
        i = bisect_right(self._starts, start)
        if i and self._ends[i - 1] == start:  # extend the range on the left
            self._ends[i - 1] = end
            i -= 1
        else:
            self._starts.insert(i, start)
            self._ends.insert(i, end)
        if i + 1 < len(self._starts) and self._starts[i + 1] == end:  # merge with the right one
            self._ends[i] = self._ends.pop(i + 1)
            self._starts.pop(i + 1)

    def _take(self, start: int) -> tuple[int, int]:
        end = min(start + self.chunk, self.ram_end)
        self.accepted += end - start
        return start, end

    def _skip_accepted(self) -> None:
        while self._starts and self._starts[0] <= self.frontier:
            self.frontier = max(self.frontier, self._ends[0])
            self._starts.pop(0)
            self._ends.pop(0)

    def advance(self, amount: int) -> Iterator[tuple[int, int]]:
        """Accept chunks in address order until ``amount`` bytes in total are accepted."""
        if not self.enabled:
            return
        self._skip_accepted()
        while self.accepted < amount and self.frontier < self.ram_end:
            start, end = self._take(self.frontier)
            self.frontier = end
            self._skip_accepted()
            yield start, end

    def ensure(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Accept the not-yet-accepted chunks covering ``[start, end)`` (an allocation there)."""
        if not self.enabled:
            return
        chunk_start = start - start % self.chunk
        for base in range(chunk_start, min(end, self.ram_end), self.chunk):
            if base < self.frontier or self._covered(base) is not None:
                continue
            piece = self._take(base)
            self._record(*piece)
            yield piece
