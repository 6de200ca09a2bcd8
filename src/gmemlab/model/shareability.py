"""Per-inode shareability: which indices the host may fault (spec 2.2, 2.14).

* ``linux-6.18``: one whole-file state fixed at creation (INIT_SHARED or not); no conversion.
* ``rfc-v2``: a maple tree of ranges over every index, ``SHAREABILITY_ALL`` (shared: host and guest may
  fault) or ``SHAREABILITY_GUEST`` (private), initialised in O(1) ranges and changed by conversion.

Both answer the same questions so callers never ask which profile is active.
"""

from __future__ import annotations

from ..rangemap import RangeMap

SHAREABILITY_GUEST = 1  # only the guest may map/fault
SHAREABILITY_ALL = 2  # host and guest may fault


class Shareability:
    """Interface: ``is_shared``, ``runs``, ``work_list``, ``store``, ``nr_ranges``."""

    convertible = False

    def is_shared(self, index: int) -> bool:
        raise NotImplementedError

    def all_shared(self, start: int, end: int) -> bool:
        raise NotImplementedError

    def any_shared(self, start: int, end: int) -> bool:
        raise NotImplementedError

    def runs(self, start: int, end: int) -> list[tuple[int, int, bool]]:
        """``(start, end, shared)`` runs clipped to ``[start, end)``."""
        raise NotImplementedError

    def work_list(self, start: int, end: int, to_shared: bool) -> list[tuple[int, int]]:
        """Sub-ranges whose state differs from the target (already-converted ranges are skipped)."""
        raise NotImplementedError

    def store(self, start: int, end: int, shared: bool) -> None:
        raise NotImplementedError

    def nr_ranges(self) -> int:
        raise NotImplementedError


class WholeFileShareability(Shareability):
    """linux-6.18: the whole file is shared iff created with INIT_SHARED; never changes."""

    def __init__(self, shared: bool) -> None:
        self.shared = shared

    def is_shared(self, index: int) -> bool:
        return self.shared

    def all_shared(self, start: int, end: int) -> bool:
        return self.shared or start >= end

    def any_shared(self, start: int, end: int) -> bool:
        return self.shared and start < end

    def runs(self, start: int, end: int) -> list[tuple[int, int, bool]]:
        return [(start, end, self.shared)] if start < end else []

    def work_list(self, start: int, end: int, to_shared: bool) -> list[tuple[int, int]]:
        return [] if to_shared == self.shared or start >= end else [(start, end)]

    def store(self, start: int, end: int, shared: bool) -> None:
        raise AssertionError("linux-6.18 shareability is fixed at creation")

    def nr_ranges(self) -> int:
        return 1


class RangeShareability(Shareability):
    """rfc-v2: ``kvm_gmem_inode_private.shareability``, one maple-tree entry per run."""

    convertible = True

    def __init__(self, npages: int, shared: bool) -> None:
        # kvm_gmem_shareability_setup(): one mtree_store_range over [0, npages - 1].
        self.tree: RangeMap[int] = RangeMap(npages, SHAREABILITY_ALL if shared else SHAREABILITY_GUEST)

    def is_shared(self, index: int) -> bool:
        # An index beyond EOF has no entry: WARN and "not shared" (spec 5.10).
        if index >= self.tree.limit:
            return False
        return self.tree.load(index) == SHAREABILITY_ALL

    def all_shared(self, start: int, end: int) -> bool:
        return self.tree.all_equal(start, min(end, self.tree.limit), SHAREABILITY_ALL) and end <= self.tree.limit

    def any_shared(self, start: int, end: int) -> bool:
        return not self.tree.all_equal(start, min(end, self.tree.limit), SHAREABILITY_GUEST)

    def runs(self, start: int, end: int) -> list[tuple[int, int, bool]]:
        return [(s, e, v == SHAREABILITY_ALL) for s, e, v in self.tree.runs(start, end)]

    def work_list(self, start: int, end: int, to_shared: bool) -> list[tuple[int, int]]:
        return self.tree.differing(start, end, SHAREABILITY_ALL if to_shared else SHAREABILITY_GUEST)

    def store(self, start: int, end: int, shared: bool) -> None:
        self.tree.store(start, end, SHAREABILITY_ALL if shared else SHAREABILITY_GUEST)

    def nr_ranges(self) -> int:
        return self.tree.nr_runs()
