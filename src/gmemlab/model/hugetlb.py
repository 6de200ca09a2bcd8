"""The HugeTLB pool and the per-inode subpool of a HugeTLB guest_memfd (workloads.md 3.1, spec 2.14).

``guestmem_hugetlb`` charges the reservation at inode setup and creates a private subpool with
``min = max = size / hpage_size`` pages, so allocation later never fails for lack of pages: creation
does (ENOMEM). Folios taken from the subpool go back to it when truncated; the reservation goes back to
the global pool when the inode is evicted. A huge page whose folio is still referenced (a long-term
pin) when it is freed waits until the last reference drops (``guestmem_hugetlb_free_folio`` and its
workqueue, workloads 3.6 step 4), then returns.

Everything is counts: a 1 TiB pool costs the same as a 2 MiB one.
"""

from __future__ import annotations

import errno

from ..errors import KvmError
from ..level import Level


def size_name(size: int) -> str:
    """``"2M"`` / ``"1G"`` (the level labels), or the size in KiB when it is no mapping level."""
    try:
        return Level.of_size(size).label
    except ValueError:
        return f"{size >> 10}K"


class HugetlbPool:
    """Free HugeTLB pages per page size on the host (``/proc/sys/vm/nr_hugepages`` per hstate)."""

    def __init__(self, pages: dict[int, int]) -> None:
        self.total = {Level.PG_2M.bytes: 0, Level.PG_1G.bytes: 0, **pages}
        self.free = dict(self.total)  # neither reserved by a subpool nor waiting on a reference

    def reserve(self, size: int, count: int, op: str) -> HugetlbSubpool:
        """``hugepage_new_subpool(min = max = count)`` plus the cgroup reservation; ENOMEM when short."""
        have = self.free.get(size, 0)
        if count > have:
            raise KvmError(
                errno.ENOMEM,
                op,
                f"size needs {count} HugeTLB pages of {size_name(size)} but the pool has {have} free",
            )
        self.free[size] = have - count
        return HugetlbSubpool(self, size, count)

    def give_back(self, size: int, count: int) -> None:
        self.free[size] = self.free.get(size, 0) + count


class HugetlbSubpool:
    """One inode's reservation: ``reserved`` pages, ``used`` of them currently backing folios."""

    def __init__(self, pool: HugetlbPool, size: int, reserved: int) -> None:
        self.pool = pool
        self.size = size
        self.reserved = reserved
        self.used = 0  # folios in the page cache
        self.waiting = 0  # freed folios still referenced (pinned); return when unpinned
        self.released = False

    def can_alloc(self, n: int = 1) -> bool:
        """``n`` reserved pages are free: false only while truncated folios still wait on pins."""
        return self.used + self.waiting + n <= self.reserved

    def alloc_folio(self, n: int = 1) -> None:
        """``guestmem_hugetlb_alloc_folio`` ``n`` times: dequeue reserved pages. min = max, so only a freed
        folio still waiting on a reference can make it fail (the caller checks :meth:`can_alloc`: ENOMEM)."""
        assert self.can_alloc(n), "subpool over-allocated"
        self.used += n

    def free_folio(self, still_referenced: bool = False) -> None:
        """The folio left the page cache; it returns now, or when its last reference drops."""
        self.used -= 1
        if still_referenced:
            self.waiting += 1

    def reference_dropped(self) -> None:
        """The last reference of a waiting folio went away: the page is back in HugeTLB."""
        self.waiting -= 1
        if self.released:
            self.pool.give_back(self.size, 1)

    def release(self) -> None:
        """Inode eviction: give the reservation back, except pages still waiting on references."""
        assert self.used == 0, "evicting an inode that still has folios"
        self.released = True
        self.pool.give_back(self.size, self.reserved - self.waiting)
