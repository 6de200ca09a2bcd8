"""Values over index ranges, coalescing equal neighbours: the maple tree's role in guest_memfd.

RFC v2 keeps an inode's shareability in a maple tree that covers every index ``0 .. size/PAGE_SIZE - 1``
and merges adjacent equal ranges on every store (spec 2.14, ``kvm_gmem_shareability_store``). This
module offers the same contract for any value: the map is *total* over ``[0, limit)``, starts as one
run of ``default``, and never holds two adjacent runs with equal values. Cost follows the number of
runs, never the number of indices, so a 1 TiB inode in one state costs one run.

Representation: two parallel lists, ``_starts`` (sorted run starts, ``_starts[0] == 0``) and
``_values``. Run ``i`` covers ``[_starts[i], _starts[i + 1])`` (the last run ends at ``limit``).

Complexity with ``r`` runs:

* :meth:`load` -- O(log r): one ``bisect``.
* :meth:`store` -- O(log r + k + m): ``k`` runs overwritten, ``m`` the list splice (memmove, fast in C).
* :meth:`runs`, :meth:`differing` -- O(log r + runs reported).
* :meth:`nr_runs` -- O(1).

Ranges are half-open ``[start, end)``, unlike the maple tree's inclusive ``[first, last]``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class RangeMap(Generic[V]):
    """A total map ``[0, limit) -> V`` stored as coalesced runs."""

    __slots__ = ("_starts", "_values", "limit")

    def __init__(self, limit: int, default: V) -> None:
        if limit <= 0:
            raise ValueError(f"RangeMap limit must be positive, got {limit}")
        self.limit = limit
        self._starts: list[int] = [0]
        self._values: list[V] = [default]

    # -- queries -----------------------------------------------------------------------------
    def load(self, index: int) -> V:
        """Value at ``index`` (``mtree_load``). O(log r)."""
        if not 0 <= index < self.limit:
            raise IndexError(f"index {index} outside [0, {self.limit})")
        return self._values[bisect_right(self._starts, index) - 1]

    def __getitem__(self, index: int) -> V:
        return self.load(index)

    def nr_runs(self) -> int:
        """Number of runs (maple-tree entries). O(1)."""
        return len(self._starts)

    def runs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, V]]:
        """Yield ``(run_start, run_end, value)`` for the runs inside ``[start, end)``, clipped to it."""
        end = self.limit if end is None else min(end, self.limit)
        start = max(start, 0)
        if start >= end:
            return
        starts, values = self._starts, self._values
        i = bisect_right(starts, start) - 1
        n = len(starts)
        while i < n:
            s = starts[i]
            if s >= end:
                break
            e = starts[i + 1] if i + 1 < n else self.limit
            yield (max(s, start), min(e, end), values[i])
            i += 1

    def differing(self, start: int, end: int, target: V) -> list[tuple[int, int]]:
        """Sub-ranges of ``[start, end)`` whose value differs from ``target``: the conversion work list.

        Adjacent differing runs are merged into one range. O(log r + runs in range).
        """
        out: list[tuple[int, int]] = []
        for s, e, v in self.runs(start, end):
            if v != target:
                if out and out[-1][1] == s:
                    out[-1] = (out[-1][0], e)
                else:
                    out.append((s, e))
        return out

    def all_equal(self, start: int, end: int, value: V) -> bool:
        """True if every index of ``[start, end)`` holds ``value`` (an empty range is uniform)."""
        return not self.differing(start, end, value)

    def any_match(self, start: int, end: int, pred: Callable[[V], bool]) -> bool:
        return any(pred(v) for _, _, v in self.runs(start, end))

    def count(self, start: int, end: int, pred: Callable[[V], bool]) -> int:
        """Number of indices in ``[start, end)`` whose value satisfies ``pred``."""
        return sum(e - s for s, e, v in self.runs(start, end) if pred(v))

    # -- updates -----------------------------------------------------------------------------
    def store(self, start: int, end: int, value: V) -> None:
        """Set ``[start, end)`` to ``value``, coalescing with equal neighbours (``mtree_store_range``)."""
        if start >= end:
            return
        if start < 0 or end > self.limit:
            raise IndexError(f"range [{start}, {end}) outside [0, {self.limit})")
        starts, values = self._starts, self._values
        lo = bisect_right(starts, start) - 1  # run containing start
        hi = bisect_right(starts, end)  # runs lo..hi-1 begin at or before end
        end_value = values[hi - 1]  # value at index `end` before the store
        # Widen the window by one run on each side so coalescing sees the neighbours.
        wlo = lo - 1 if lo > 0 else lo
        whi = hi + 1 if hi < len(starts) else hi
        pieces: list[tuple[int, V]] = []
        if wlo < lo:
            pieces.append((starts[wlo], values[wlo]))
        if starts[lo] < start:
            pieces.append((starts[lo], values[lo]))
        pieces.append((start, value))
        if end < self.limit and (hi == len(starts) or starts[hi] != end):
            pieces.append((end, end_value))
        if whi > hi:
            pieces.append((starts[hi], values[hi]))
        new_starts: list[int] = []
        new_values: list[V] = []
        for s, v in pieces:
            if new_values and new_values[-1] == v:
                continue
            new_starts.append(s)
            new_values.append(v)
        starts[wlo:whi] = new_starts
        values[wlo:whi] = new_values

    def update(self, start: int, end: int, fn: Callable[[V], V]) -> None:
        """Replace every value ``v`` in ``[start, end)`` by ``fn(v)`` (e.g. a pin count + 1)."""
        for s, e, v in list(self.runs(start, end)):
            self.store(s, e, fn(v))

    # -- checking ----------------------------------------------------------------------------
    def check(self) -> None:
        """Assert the invariants: starts strictly increasing from 0 and below limit, no equal neighbours."""
        starts, values = self._starts, self._values
        assert len(starts) == len(values) >= 1, "parallel lists out of step"
        assert starts[0] == 0, "first run must start at 0"
        for i in range(1, len(starts)):
            assert starts[i - 1] < starts[i] < self.limit, f"run starts out of order at {i}"
            assert values[i - 1] != values[i], f"equal neighbours not coalesced at {starts[i]}"

    def __repr__(self) -> str:
        shown = ", ".join(f"[{s:#x},{e:#x})={v!r}" for s, e, v in list(self.runs())[:8])
        more = "" if self.nr_runs() <= 8 else f", ... {self.nr_runs()} runs"
        return f"RangeMap(limit={self.limit:#x}: {shown}{more})"
