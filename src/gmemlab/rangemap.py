"""Values over index ranges, coalescing equal neighbours: the maple tree's role in guest_memfd.

RFC v2 keeps an inode's shareability in a maple tree that covers every index ``0 .. size/PAGE_SIZE - 1``
and merges adjacent equal ranges on every store (spec 2.14, ``kvm_gmem_shareability_store``). This
module offers the same contract for any value: the map is *total* over ``[0, limit)``, starts as one
run of ``default``, and never reports two adjacent runs with equal values. Cost follows the number of
runs, never the number of indices, so a 1 TiB inode in one state costs one run.

Representation (a one-level radix table of sorted buckets, sized by the number of runs):

* The index space is cut into ``nb`` buckets of ``W = 2**_shift`` indices each; bucket ``b`` covers
  ``[b * W, min((b + 1) * W, limit))``. ``nb`` is a power of two chosen from the number of runs ``r``
  (about ``r / _TARGET`` buckets), so memory is O(r) whatever ``limit`` is: one bucket while the map
  holds few runs, even for ``limit = 2**40``.
* ``_bs[b]`` and ``_bv[b]`` are parallel sequences: the sorted entry starts inside bucket ``b`` (an
  unsigned 64-bit ``array`` when ``limit <= 2**64``, else a list) and a list of their values.
  ``_bs[b][0]`` is always the bucket's first index, so a run crossing a bucket boundary is
  held as one entry per bucket. Inside a bucket neighbouring entries always differ; across a bucket
  boundary they may be equal (a *continuation*), and readers merge those so callers only ever see
  coalesced runs.
* ``_nruns`` counts the coalesced runs (entries minus continuations); when it leaves
  ``[_shrink_at, _grow_at]`` the table is rebuilt with the bucket count for the new size. Rebuilds cost
  O(r) and happen only after ``r`` has changed by a constant factor, so they are amortised O(1).

A load is one shift, one ``bisect`` in a bucket and two list indexings; a store usually touches one
bucket and splices a short list. With ``r`` runs, ``k`` entries overwritten by a store, ``m`` the bucket
length (16 to 64 when runs are spread over the index space) and ``B`` the number of buckets a store spans:

* :meth:`load` -- O(log m).
* :meth:`store` -- O(B + log m + k + m), amortised, and O(log m + m) when the range lies in one bucket.
* :meth:`runs`, :meth:`differing`, :meth:`count` -- O(log m + runs reported + buckets crossed);
  :meth:`first_match` and :meth:`any_match` stop at the first match; they and :meth:`differing` are O(1)
  while the map is one run.
* :meth:`nr_runs` -- O(1).

Since ``nb`` is O(r), every bound above is O(r) at worst and never depends on ``limit``. The bucket length
``m`` only stays small when runs are spread over the index space; if they cluster in a small part of a
huge range, a bucket can hold most runs and the map degrades to a single sorted list (O(log r) loads,
O(r) memmove splices: measured 0.85x the plain bisect list there). A store spanning many nearly empty
buckets costs O(B) Python steps even when it removes few runs.

Ranges are half-open ``[start, end)``, unlike the maple tree's inclusive ``[first, last]``.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator, MutableSequence
from itertools import pairwise
from typing import Generic, TypeVar

V = TypeVar("V")

_TARGET = 16  # mean entries per bucket right after a rebuild (measured: 8 to 16 is best; 64 is 10% slower)
_GROW = 4  # rebuild with more buckets when the mean exceeds _TARGET * _GROW
_SHRINK = 8  # rebuild with fewer buckets when the mean falls below _TARGET / _SHRINK


class RangeMap(Generic[V]):
    """A total map ``[0, limit) -> V`` stored as coalesced runs."""

    __slots__ = ("_bs", "_bv", "_grow_at", "_nruns", "_packed", "_shift", "_shrink_at", "limit")

    def __init__(self, limit: int, default: V) -> None:
        """Map every index of ``[0, limit)`` to ``default``: one run. O(1)."""
        if limit <= 0:
            raise ValueError(f"RangeMap limit must be positive, got {limit}")
        self.limit = limit
        # Starts are packed in unsigned 64-bit arrays when they fit: a bisect then reads one contiguous buffer
        # instead of chasing pointers to int objects scattered over the heap (loads measured 35% faster).
        self._packed = limit <= 1 << 64  # every index fits an unsigned 64-bit item
        self._nruns = 1
        # One run: the layout _rebuild([0], [default]) makes (one bucket spanning every index), built directly
        # because the model creates many maps per inode and VM and most stay one run (bench/convert.py).
        self._shift = (limit - 1).bit_length()
        self._bs: list[MutableSequence[int]] = [array("Q", (0,)) if self._packed else [0]]
        self._bv: list[list[V]] = [[default]]
        self._grow_at = _TARGET * _GROW
        self._shrink_at = 0

    # -- layout ------------------------------------------------------------------------------
    def _rebuild(self, starts: list[int], values: list[V]) -> None:
        """Lay the coalesced runs ``starts``/``values`` out in a table sized for their count. O(r)."""
        limit = self.limit
        r = len(starts)
        want = max(1, r // _TARGET)  # buckets wanted
        span = limit - 1  # highest index
        shift = max(0, span.bit_length() - want.bit_length())
        while (span >> shift) + 1 > want:  # the fewest bits giving at most `want` buckets
            shift += 1
        nb = (span >> shift) + 1  # more than want / 2 unless limit is the bound (shift 0)
        bs: list[MutableSequence[int]] = []
        bv: list[list[V]] = []
        packed = self._packed
        i = 0
        for b in range(nb):
            base = b << shift
            top = base + (1 << shift)
            # Run i is the last run starting at or before base.
            while i + 1 < r and starts[i + 1] <= base:
                i += 1
            j = i + 1
            while j < r and starts[j] < top:
                j += 1
            s = starts[i:j]
            s[0] = base
            bs.append(array("Q", s) if packed else s)
            bv.append(values[i:j])
            i = j - 1
        self._bs = bs
        self._bv = bv
        self._shift = shift
        self._nruns = r
        self._grow_at = nb * _TARGET * _GROW
        self._shrink_at = (nb * _TARGET) // _SHRINK if nb > 1 else 0

    def _relayout(self) -> None:
        """Rebuild the table for the current run count. O(r)."""
        starts: list[int] = []
        values: list[V] = []
        for s, _e, v in self.runs():
            starts.append(s)
            values.append(v)
        self._rebuild(starts, values)

    # -- queries -----------------------------------------------------------------------------
    def load(self, index: int) -> V:
        """Value at ``index`` (``mtree_load``). O(log m), ``m`` the bucket length (16 to 64 when spread)."""
        if index < 0 or index >= self.limit:
            raise IndexError(f"index {index} outside [0, {self.limit})")
        b = index >> self._shift
        return self._bv[b][bisect_right(self._bs[b], index) - 1]

    __getitem__ = load

    def nr_runs(self) -> int:
        """Number of runs (maple-tree entries). O(1)."""
        return self._nruns

    def runs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, V]]:
        """Yield ``(run_start, run_end, value)`` for the runs inside ``[start, end)``, clipped to it.

        O(log m + runs reported + buckets crossed).
        """
        end = self.limit if end is None else min(end, self.limit)
        start = max(start, 0)
        if start >= end:
            return
        shift, bs, bv = self._shift, self._bs, self._bv
        b = start >> shift
        last = (end - 1) >> shift
        s_list, v_list = bs[b], bv[b]
        i = bisect_right(s_list, start) - 1
        cur_s, cur_v = start, v_list[i]
        while True:
            # Entries after i in bucket b differ from their predecessor: each one ends a run.
            for k in range(i + 1, len(s_list)):
                s = s_list[k]
                if s >= end:
                    yield (cur_s, end, cur_v)
                    return
                yield (cur_s, s, cur_v)
                cur_s, cur_v = s, v_list[k]
            b += 1
            if b > last:
                break
            s_list, v_list = bs[b], bv[b]
            v = v_list[0]
            if v != cur_v:  # not a continuation: the run ends at the bucket boundary
                s = s_list[0]
                yield (cur_s, s, cur_v)
                cur_s, cur_v = s, v
            i = 0
        yield (cur_s, end, cur_v)

    def differing(self, start: int, end: int, target: V) -> list[tuple[int, int]]:
        """Sub-ranges of ``[start, end)`` whose value differs from ``target``: the conversion work list.

        Adjacent differing runs are merged into one range. O(log m + runs in range + buckets crossed).
        """
        if self._nruns == 1:  # one run: no walk (a whole-file conversion of a file in one state)
            start, end = max(start, 0), min(end, self.limit)
            return [(start, end)] if start < end and self._bv[0][0] != target else []
        out: list[tuple[int, int]] = []
        for s, e, v in self.runs(start, end):
            if v != target:
                if out and out[-1][1] == s:
                    out[-1] = (out[-1][0], e)
                else:
                    out.append((s, e))
        return out

    def all_equal(self, start: int, end: int, value: V) -> bool:
        """True if every index of ``[start, end)`` holds ``value`` (an empty range is uniform).

        O(log m + runs in range + buckets crossed), stopping at the first differing run.
        """
        return all(v == value for _, _, v in self.runs(start, end))

    def any_match(self, start: int, end: int, pred: Callable[[V], bool]) -> bool:
        """True if some index of ``[start, end)`` holds a value satisfying ``pred``. O(like :meth:`runs`)."""
        return self.first_match(start, end, pred) is not None

    def first_match(self, start: int, end: int, pred: Callable[[V], bool]) -> int | None:
        """First index of ``[start, end)`` whose value satisfies ``pred``, or None. O(like :meth:`runs`),
        O(1) while the map is one run (e.g. an inode's pin counts when nothing is pinned)."""
        if self._nruns == 1:
            start, end = max(start, 0), min(end, self.limit)
            return start if start < end and pred(self._bv[0][0]) else None
        for s, _, v in self.runs(start, end):
            if pred(v):
                return s
        return None

    def count(self, start: int, end: int, pred: Callable[[V], bool]) -> int:
        """Number of indices in ``[start, end)`` whose value satisfies ``pred``. O(like :meth:`runs`)."""
        return sum(e - s for s, e, v in self.runs(start, end) if pred(v))

    # -- updates -----------------------------------------------------------------------------
    def store(self, start: int, end: int, value: V) -> None:
        """Set ``[start, end)`` to ``value``, coalescing with equal neighbours (``mtree_store_range``).

        O(log m + m) when the range lies in one bucket; O(B + log m + k + m) amortised when it spans
        ``B`` buckets (``B`` is O(r)). An empty range is a no-op.
        """
        if start >= end:
            return
        if start < 0 or end > self.limit:
            raise IndexError(f"range [{start}, {end}) outside [0, {self.limit})")
        shift = self._shift
        b = start >> shift
        last = (end - 1) >> shift
        if b == last:
            self._store_in(b, start, end, value)
        else:
            self._store_in(b, start, (b + 1) << shift, value)
            for m in range(b + 1, last):
                self._store_in(m, m << shift, (m + 1) << shift, value)
            self._store_in(last, last << shift, end, value)
        nr = self._nruns
        if nr > self._grow_at or nr < self._shrink_at:
            self._relayout()

    def _store_in(self, b: int, start: int, end: int, value: V) -> None:
        """Store ``[start, end)``, which lies inside bucket ``b``, and keep ``_nruns`` exact. O(log m + m)."""
        s_list = self._bs[b]
        v_list = self._bv[b]
        n = len(s_list)
        i = bisect_right(s_list, start) - 1  # entry holding start
        j = bisect_right(s_list, end, i)  # entries before j start at or before end
        # Left side: entries [a, c) are replaced; `start` gets a new entry unless it merges leftwards.
        if s_list[i] < start:
            a = i + 1
            new_left = v_list[i] != value
        else:
            a = i
            new_left = i == 0 or v_list[i - 1] != value
        # Right side: index `end` keeps its old value; it needs an entry unless that merges too.
        tail_v = v_list[j - 1]
        has_tail = False
        if end >> self._shift != b or end >= self.limit:
            c = j  # the store reaches the end of the bucket
        elif s_list[j - 1] == end:  # an entry starts at end already
            c = j if tail_v == value else j - 1
        else:
            c = j
            has_tail = tail_v != value
        if new_left:
            if has_tail:
                ns: tuple[int, ...] = (start, end)
                nv: tuple[V, ...] = (value, tail_v)
            else:
                ns = (start,)
                nv = (value,)
        elif has_tail:
            ns = (end,)
            nv = (tail_v,)
        else:
            ns = nv = ()
        edges = a == 0 or c == n  # the bucket's first or last value may change
        before = self._edges(b) if edges else 0
        # One splice (at most one memmove) per list. An array splice needs an array on the right, which
        # costs more to build than the splice of a short bucket, so the common shapes avoid it.
        k = len(ns)
        d = c - a
        if not self._packed:
            s_list[a:c] = ns
        elif k == d:
            if k:
                s_list[a] = ns[0]
                if k == 2:
                    s_list[a + 1] = ns[1]
        elif k == 0:
            del s_list[a:c]
        elif d == 0 and (k == 1 or n < 256):  # one or two inserts: short memmoves
            s_list.insert(a, ns[0])
            if k == 2:
                s_list.insert(a + 1, ns[1])
        else:
            s_list[a:c] = array("Q", ns)
        v_list[a:c] = nv
        delta = k - d
        if edges:  # recount the continuations (equal values across a boundary) at its edges
            delta -= self._edges(b) - before
        self._nruns += delta

    def _edges(self, b: int) -> int:
        """Continuations (equal values across a boundary) at the two edges of bucket ``b``. O(1)."""
        bv = self._bv
        n = 0
        if b > 0 and bv[b - 1][-1] == bv[b][0]:
            n += 1
        if b + 1 < len(bv) and bv[b][-1] == bv[b + 1][0]:
            n += 1
        return n

    def update(self, start: int, end: int, fn: Callable[[V], V]) -> None:
        """Replace every value ``v`` in ``[start, end)`` by ``fn(v)`` (e.g. a pin count + 1).

        O(runs in range) stores, each as :meth:`store`.
        """
        for s, e, v in list(self.runs(start, end)):
            self.store(s, e, fn(v))

    # -- checking ----------------------------------------------------------------------------
    def check(self) -> None:
        """Assert the invariants of the layout and of the coalesced runs. O(r)."""
        bs, bv, shift, limit = self._bs, self._bv, self._shift, self.limit
        assert len(bs) == len(bv) == ((limit - 1) >> shift) + 1, "table size does not match the shift"
        entries = 0
        continuations = 0
        for b, (s_list, v_list) in enumerate(zip(bs, bv, strict=True)):
            base = b << shift
            top = min(base + (1 << shift), limit)
            assert len(s_list) == len(v_list) >= 1, f"bucket {b}: parallel lists out of step"
            assert s_list[0] == base, f"bucket {b} must start at its first index {base}"
            for k in range(1, len(s_list)):
                assert s_list[k - 1] < s_list[k] < top, f"bucket {b}: starts out of order at {k}"
                assert v_list[k - 1] != v_list[k], f"equal neighbours not coalesced at {s_list[k]}"
            entries += len(s_list)
            if b > 0 and bv[b - 1][-1] == v_list[0]:
                continuations += 1
        assert self._nruns == entries - continuations, "run count out of step"
        runs = list(self.runs())
        assert len(runs) == self._nruns, "runs() disagrees with nr_runs()"
        assert runs[0][0] == 0 and runs[-1][1] == limit, "runs do not cover [0, limit)"
        for (_, e0, v0), (s1, _, v1) in pairwise(runs):
            assert e0 == s1, f"runs not contiguous at {s1}"
            assert v0 != v1, f"equal neighbours not coalesced at {s1}"
        assert self._shrink_at <= self._nruns <= self._grow_at, "table size not rebuilt for the run count"

    def __repr__(self) -> str:
        shown = []
        for k, (s, e, v) in enumerate(self.runs()):
            if k == 8:
                break
            shown.append(f"[{s:#x},{e:#x})={v!r}")
        more = "" if self.nr_runs() <= 8 else f", ... {self.nr_runs()} runs"
        return f"RangeMap(limit={self.limit:#x}: {', '.join(shown)}{more})"
