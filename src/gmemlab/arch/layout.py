"""Where guest allocations sit in guest-physical memory (workloads.md §1.2 "Shared regions", §6 geometry).

The simulated VM has one RAM memslot ``[0, ram_end)``. Payload ranges, swiotlb, GHCB pages, rings and
runtime DMA buffers are *reserved* here so they never overlap; placement is top-down (memblock's
direction, for ``low`` and ``top`` regions) or random (``scattered``), from the generator's seeded RNG.
Only reserved ranges are stored (sorted, disjoint), so memory follows the number of allocations, never the
guest size (DESIGN.md principle 3).
"""

from __future__ import annotations

import random
from bisect import bisect_left

from ..uapi import PAGE_SIZE

LOW_LIMIT = 1 << 32  # "allocated from low memory": below 4 GiB (§1.2)


class PlacementError(ValueError):
    """No free, aligned gap of the requested size in the requested window."""


def align_down(value: int, align: int) -> int:
    return value - value % align


def align_up(value: int, align: int) -> int:
    return -(-value // align) * align


class Layout:
    """Disjoint reserved GPA ranges inside RAM ``[0, ram_end)``, plus a cursor for non-RAM ranges."""

    def __init__(self, ram_end: int) -> None:
        self.ram_end = ram_end
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._mmio_next = align_up(ram_end, 1 << 30)

    def overlap(self, start: int, end: int) -> tuple[int, int] | None:
        """The reserved range with the highest start that overlaps ``[start, end)``, if any."""
        i = bisect_left(self._starts, end) - 1
        if i >= 0 and self._ends[i] > start:
            return self._starts[i], self._ends[i]
        return None

    def reserve(self, start: int, end: int) -> None:
        if self.overlap(start, end):
            raise PlacementError(f"[{start:#x}, {end:#x}) overlaps a reserved range")
        i = bisect_left(self._starts, start)
        self._starts.insert(i, start)
        self._ends.insert(i, end)

    def release(self, start: int) -> None:
        i = bisect_left(self._starts, start)
        del self._starts[i], self._ends[i]

    def top_down(self, size: int, align: int, below: int, above: int = 0) -> int:
        """Reserve the highest ``align``-aligned free ``size`` bytes ending at or below ``below``."""
        end = min(below, self.ram_end)
        while True:
            start = align_down(end - size, align)
            if start < above:
                raise PlacementError(f"no free {size:#x} bytes aligned to {align:#x} in [{above:#x}, {below:#x})")
            hit = self.overlap(start, start + size)
            if hit is None:
                self.reserve(start, start + size)
                return start
            end = hit[0]

    def scattered(self, size: int, align: int, lo: int, hi: int, rng: random.Random, tries: int = 64) -> int:
        """Reserve ``size`` bytes at a random aligned spot in ``[lo, hi)``; top-down if luck runs out."""
        first = align_up(lo, align)
        slots = (min(hi, self.ram_end) - size - first) // align + 1
        for _ in range(tries if slots > 0 else 0):
            start = first + rng.randrange(slots) * align
            if self.overlap(start, start + size) is None:
                self.reserve(start, start + size)
                return start
        return self.top_down(size, align, hi, lo)

    def outside_ram(self, size: int, align: int = PAGE_SIZE) -> int:
        """A GPA range above RAM (MMIO: TDX's PCI hole, pKVM device pages), never reserved in RAM."""
        start = align_up(self._mmio_next, align)
        self._mmio_next = start + size
        return start
