"""Which guest memory is accepted, and in which order Linux accepts the rest (docs/placement.md §1.2).

The EFI stub tracks unaccepted memory in a bitmap of ``unit`` (2 MiB, ``EFI_UNACCEPTED_UNIT_SIZE``)
starting at the lowest unaccepted address, which under OVMF is the top of low RAM: the firmware accepted
everything below it (docs/placement.md F1/F4; ``drivers/firmware/efi/libstub/unaccepted_memory.c``). Then:

* ``accept_memory(start, size)`` accepts every still-unaccepted unit touching ``[start, end)``, and **the
  next unit too when ``end`` is unit-aligned** (a guard for ``load_unaligned_zeropad``); each contiguous run
  of units is one ``arch_accept_memory()`` call (``drivers/firmware/efi/unaccepted_memory.c``
  ``accept_memory()``) -- :meth:`Acceptance.accept`;
* memblock allocations accept what they allocate, out of order (``mm/memblock.c``
  ``memblock_alloc_range_nid()``) -- :meth:`Acceptance.accept` too;
* the buddy allocator queues every MAX_ORDER block (4 MiB, ``chunk``) holding unaccepted memory on
  ``zone->unaccepted_pages`` in ascending order and lazily accepts **the list head**, one block per step
  (``mm/page_alloc.c`` ``__free_unaccepted()``, ``try_to_accept_memory_one()``): a frontier rising from the
  bitmap origin -- :meth:`Acceptance.advance`.

Accepted memory is kept as a range map of pages, so memory follows the number of out-of-order
acceptances, never the guest size.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..rangemap import RangeMap
from ..uapi import PAGE_SHIFT


class Acceptance:
    """Accepted memory of RAM ``[0, ram_end)``; ``origin``: where the bitmap and the lazy frontier start
    (the firmware accepts below it, :meth:`take`)."""

    def __init__(self, ram_end: int, chunk: int, unit: int, origin: int, enabled: bool = True) -> None:
        self.ram_end = ram_end
        self.chunk = chunk
        self.unit = unit
        self.enabled = enabled
        self.origin = origin - origin % unit
        self.frontier = self.origin  # blocks below it hold no unaccepted memory
        self.accepted = 0  # bytes the kernel accepted (the firmware's :meth:`take` excluded)
        self._map: RangeMap[bool] = RangeMap(max(ram_end >> PAGE_SHIFT, 1), False)

    def is_accepted(self, start: int, end: int) -> bool:
        return self._map.all_equal(start >> PAGE_SHIFT, end >> PAGE_SHIFT, True)

    def mark(self, start: int, end: int) -> None:
        """Record ``[start, end)`` as accepted without an event (validated at launch: LAUNCH_UPDATE pages)."""
        self._map.store(start >> PAGE_SHIFT, min(end, self.ram_end) >> PAGE_SHIFT, True)

    def take(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The firmware's acceptance of ``[start, end)``: the runs not accepted yet, page granular (OVMF
        accepts whole resource ranges, docs/placement.md F1/F4); counted apart from the kernel's (``accepted``)."""
        if not self.enabled or start >= end:
            return
        for s, e in self._map.differing(start >> PAGE_SHIFT, min(end, self.ram_end) >> PAGE_SHIFT, True):
            self._map.store(s, e, True)
            yield s << PAGE_SHIFT, e << PAGE_SHIFT

    def accept(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """``accept_memory(start, end - start)``: the runs of units it accepts (docs/placement.md A2)."""
        if not self.enabled or start >= end:
            return
        lo = start - start % self.unit
        hi = -(-end // self.unit) * self.unit
        if end % self.unit == 0:
            hi += self.unit  # the guard unit
        hi = min(hi, self.ram_end)
        for s, e in self._map.differing(lo >> PAGE_SHIFT, hi >> PAGE_SHIFT, True):
            a, b = s << PAGE_SHIFT, e << PAGE_SHIFT
            self._map.store(s, e, True)
            self.accepted += b - a
            yield a, b

    def _next_block(self) -> int | None:
        """Lowest block at or above the frontier that still holds unaccepted memory."""
        page = self.frontier >> PAGE_SHIFT
        for s, _, v in self._map.runs(page, self._map_limit()):
            if not v:
                addr = s << PAGE_SHIFT
                return addr - addr % self.chunk
        return None

    def _map_limit(self) -> int:
        return self.ram_end >> PAGE_SHIFT

    def advance(self, amount: int) -> Iterator[tuple[int, int]]:
        """Lazy acceptance (docs/placement.md A6): take the lowest queued block until ``amount`` bytes in total
        were accepted through this object; yields each ``arch_accept_memory()`` range."""
        if not self.enabled:
            return
        while self.accepted < amount:
            block = self._next_block()
            if block is None:
                return
            self.frontier = block + self.chunk
            yield from self.accept(block, min(block + self.chunk, self.ram_end))

    def _hi(self, block: int) -> int:
        """Where ``accept(block, block + chunk)`` stops: the guard unit included, capped at the RAM end."""
        end = block + self.chunk
        return min(end + (self.unit if end % self.unit == 0 else 0), self.ram_end)

    def advance_runs(self, amount: int) -> Iterator[tuple[int, int, int]]:
        """:meth:`advance` as runs ``(start, end, times)``: ``times`` calls in a row, the ``k``-th accepting
        ``[start + k * chunk, end + k * chunk)``. Once the frontier has taken two blocks in a row cleanly
        (one range each, the second starting where the first ended), every further block up to the next
        out-of-order acceptance, the RAM end or ``amount`` is the same call shifted by ``chunk``: the run
        is counted from the range map, never walked (the tests check it against :meth:`advance`)."""
        if not self.enabled:
            return
        chunk = self.chunk
        prev: tuple[int, int] | None = None  # (block, end of what it accepted) of a clean call
        while self.accepted < amount:
            block = self._next_block()
            if block is None:
                return
            self.frontier = block + chunk
            got = list(self.accept(block, min(block + chunk, self.ram_end)))
            for a, b in got:
                yield a, b, 1
            clean = len(got) == 1 and got[0][1] == self._hi(block)
            if not clean:
                prev = None
                continue
            a, b = got[0]
            if prev is not None and prev == (block - chunk, a) and b - a == chunk and chunk % self.unit == 0:
                hole = next(iter(self._map.runs(b >> PAGE_SHIFT, self._map_limit())), None)
                room = (hole[1] << PAGE_SHIFT) - b if hole is not None and not hole[2] else 0
                last_block = self.ram_end - chunk - self.unit  # the guard unit must fit: no capped call
                k = min(room // chunk, max(last_block - block, 0) // chunk, -(-(amount - self.accepted) // chunk))
                if k > 0:
                    self._map.store(b >> PAGE_SHIFT, (b + k * chunk) >> PAGE_SHIFT, True)
                    self.accepted += k * chunk
                    self.frontier = block + (k + 1) * chunk
                    yield a + chunk, b + chunk, k
                    block, b = block + k * chunk, b + k * chunk
            prev = (block, b)

    def unaccepted(self) -> int:
        """Bytes of RAM still unaccepted."""
        return self._map.count(0, self._map_limit(), lambda v: not v) << PAGE_SHIFT
