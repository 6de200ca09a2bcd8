"""Guest-physical layout and reservations (docs/placement.md §0, §2.1; workloads.md §6 geometry).

**Addresses are RAM offsets.** QEMU's q35 machine puts ``low_top`` bytes of RAM below 4 GiB and the rest at
4 GiB (``pc_q35_init``: ``low_top`` = 2 GiB once RAM is at least 2.75 GiB, else all of it). One guest_memfd
backs the whole RAM block, bound by two memslots: RAM offset ``x`` is GPA ``x`` below ``low_top`` and GPA
``x + 4 GiB - low_top`` above. Both boundaries are 1 GiB-aligned, so every folio boundary and every
stage-2 alignment rule is the same in offsets as in GPAs; the simulator works in offsets, and "below
4 GiB" means below :attr:`Layout.low_top`.

Reservations (payload, shared regions, runtime DMA buffers) never overlap. The placement rules are those
of the kernel's allocators, each named where it is used (:mod:`gmemlab.arch.regions`):

* memblock is **top-down** (``memblock.bottom_up = false`` on x86): :meth:`Layout.top_down`;
* the buddy allocator hands out accepted memory from the low end of ZONE_NORMAL first:
  :meth:`Layout.scattered` over the window the caller computes;
* ``scattered`` (uniform over all RAM) stays available as an explicit alternative.

Only reserved ranges are stored (sorted, disjoint), so memory follows the number of allocations, never the
guest size (DESIGN.md principle 3).
"""

from __future__ import annotations

import random
from bisect import bisect_left

from ..level import Level
from ..uapi import PAGE_SIZE
from ..workload.derived import q35_low_top


class PlacementError(ValueError):
    """No free, aligned gap of the requested size in the requested window."""


def align_down(value: int, align: int) -> int:
    return value - value % align


def align_up(value: int, align: int) -> int:
    return -(-value // align) * align


class Layout:
    """Disjoint reserved RAM ranges inside ``[0, ram_end)``, plus a cursor for non-RAM ranges."""

    def __init__(self, ram_end: int) -> None:
        self.ram_end = ram_end
        self.low_top = q35_low_top(ram_end)
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._mmio_next = align_up(ram_end, Level.PG_1G.bytes)

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
        """Reserve the highest ``align``-aligned free ``size`` bytes ending at or below ``below``
        (memblock's top-down search, ``__memblock_find_range_top_down``)."""
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

    def highest_free(self, size: int, align: int) -> int | None:
        """Start of the highest ``align``-aligned free ``size`` bytes, without reserving (O(reservations))."""
        end = self.ram_end
        for i in range(len(self._starts) - 1, -2, -1):
            floor = self._ends[i] if i >= 0 else 0
            start = align_down(end - size, align)
            if start >= floor and start >= 0:
                return start
            if i >= 0:
                end = min(end, self._starts[i])
        return None

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
        """An address range past RAM (MMIO: TDX's PCI hole, pKVM device pages), never reserved in RAM."""
        start = align_up(self._mmio_next, align)
        self._mmio_next = start + size
        return start
