"""The shared state the kernel paths race on (one guest_memfd inode, one VM, one memslot).

Everything a step may read or write lives in :class:`World`: the per-index shareability (RFC2/IPC26 maple
tree, or the per-VM attribute array for linux-6.18, spec §2.7/§2.14), the page cache (folio presence,
uptodate/"prepared" flag, reference count, folio lock), the host userspace PTE, the stage-2 mapping (SPTE),
KVM's MMU-notifier counters (``mmu_invalidate_seq`` / ``mmu_invalidate_in_progress``) and the sleeping
locks (spec §2.13). Per-index fields are tuples and every update replaces the tuple, so a clone is a
shallow copy and :meth:`World.key` is a cheap hashable snapshot for the explorer's visited set.

Folios carry a *generation* (``folio 0#2`` = the second folio ever allocated at index 0) so that a mapping of
a folio that has since been truncated can be told apart from a mapping of the current one.

The fields ``conv_window`` and ``violations`` are ghost state: they exist only so properties can be checked
(see :mod:`gmemlab.races.properties`).
"""

from __future__ import annotations

from collections.abc import Hashable

# Shareability values (RFC2 names in comments, spec §2.14). linux-6.18 reuses them for the per-VM
# KVM_MEMORY_ATTRIBUTE_PRIVATE attribute (§2.7).
SHARED = "shared"  # SHAREABILITY_ALL: host and guest may fault
PRIVATE = "private"  # SHAREABILITY_GUEST: only the guest may fault
PREPARED = "private_prepared"  # SHAREABILITY_GUEST_PREPARED (discussed, Michael Roth's proposal)
STATES = (SHARED, PRIVATE, PREPARED)

# Sleeping locks and the lock order (spec §2.13: slots_lock -> invalidate_lock -> KVM MMU lock; the folio
# lock nests inside the invalidate lock; Roth's dedicated rw_semaphore sits between the two).
SLOTS_LOCK = "slots_lock"  # kvm->slots_lock (a mutex: only the write side is used)
INVALIDATE_LOCK = "invalidate_lock"  # i_mapping->invalidate_lock (filemap_invalidate_lock*)
GMEM_RWSEM = "gmem_rwsem"  # Michael Roth's dedicated shareability rw_semaphore
MMU_LOCK = "mmu_lock"  # kvm->mmu_lock (an rwlock: TDP MMU faults take it for read, invalidations for write)
FOLIO_LOCK = "folio_lock"  # per index: the lock of the folio currently in the page cache at that index
LOCKS = (SLOTS_LOCK, INVALIDATE_LOCK, GMEM_RWSEM, MMU_LOCK)
LOCK_RANK = {SLOTS_LOCK: 0, INVALIDATE_LOCK: 1, GMEM_RWSEM: 2, FOLIO_LOCK: 3, MMU_LOCK: 4}

NOBODY = -1
READ, WRITE = "read", "write"

_FREE: tuple[int, frozenset[int]] = (NOBODY, frozenset())


def folio_name(index: int, gen: int) -> str:
    return f"folio {index}#{gen}"


class World:
    """One state of the guest_memfd inode, its VM and the locks; cheap to clone and to hash."""

    __slots__ = (
        "conv_window",
        "detached",
        "flock",
        "folio",
        "host_pte",
        "init_shared",
        "locks",
        "mmu_in_progress",
        "mmu_seq",
        "next_gen",
        "npages",
        "per_index",
        "refcount",
        "share",
        "spte",
        "uptodate",
        "violations",
    )

    def __init__(self, npages: int, init: str, *, per_index: bool = True, init_shared: bool = False) -> None:
        self.npages = npages
        self.per_index = per_index  # RFC2/IPC26/Roth: host faultability per index; linux-6.18: whole file
        self.init_shared = init_shared  # linux-6.18: GUEST_MEMFD_FLAG_INIT_SHARED (immutable, §2.2)
        self.share: tuple[str, ...] = (init,) * npages
        self.folio: tuple[int, ...] = (0,) * npages  # generation of the folio in the page cache, 0 = none
        self.uptodate: tuple[bool, ...] = (False,) * npages  # folio_test_uptodate = "prepared" (§2.8 step 6)
        self.refcount: tuple[int, ...] = (0,) * npages  # folio_ref_count of the cached folio
        self.flock: tuple[int, ...] = (NOBODY,) * npages  # folio lock owner (thread id)
        self.host_pte: tuple[int, ...] = (0,) * npages  # generation mapped by a host userspace PTE, 0 = none
        self.spte: tuple[tuple[int, str] | None, ...] = (None,) * npages  # (generation, kind); gen 0 = HVA
        self.next_gen: tuple[int, ...] = (1,) * npages
        self.detached: tuple[tuple[int, int, int], ...] = ()  # truncated folios still referenced
        self.locks: tuple[tuple[int, frozenset[int]], ...] = (_FREE,) * len(LOCKS)
        self.mmu_seq = 0  # kvm->mmu_invalidate_seq
        self.mmu_in_progress = 0  # kvm->mmu_invalidate_in_progress
        self.conv_window: tuple[int, ...] = (NOBODY,) * npages  # ghost: conversion inspected index (tid)
        self.violations: tuple[tuple[str, str], ...] = ()  # ghost: set by steps that break a property

    # -- snapshots ---------------------------------------------------------------------------------------
    def key(self) -> Hashable:
        return (
            self.share,
            self.folio,
            self.uptodate,
            self.refcount,
            self.flock,
            self.host_pte,
            self.spte,
            self.next_gen,
            self.detached,
            self.locks,
            self.mmu_seq,
            self.mmu_in_progress,
            self.conv_window,
        )

    def clone(self) -> World:
        new = World.__new__(World)
        for name in World.__slots__:
            setattr(new, name, getattr(self, name))
        return new

    def put(self, field: str, index: int, value: object) -> None:
        """Replace element ``index`` of the per-index tuple ``field``."""
        old = getattr(self, field)
        setattr(self, field, (*old[:index], value, *old[index + 1 :]))

    def violate(self, prop: str, message: str) -> None:
        self.violations = (*self.violations, (prop, message))

    # -- derived views -----------------------------------------------------------------------------------
    def is_private(self, index: int) -> bool:
        return self.share[index] != SHARED

    def host_faultable(self, index: int) -> bool:
        """May the host map this index? RFC2/IPC26: shareability ALL; linux-6.18: INIT_SHARED file."""
        return self.share[index] == SHARED if self.per_index else self.init_shared

    def expected_spte_kind(self, index: int) -> str:
        return "private" if self.is_private(index) else "shared"

    # -- locks -------------------------------------------------------------------------------------------
    def lock_state(self, name: str) -> tuple[int, frozenset[int]]:
        return self.locks[LOCKS.index(name)]

    def can_acquire(self, name: str, mode: str, tid: int) -> bool:
        writer, readers = self.lock_state(name)
        if mode == READ:
            return writer == NOBODY
        return writer == NOBODY and not readers

    def held_by(self, tid: int) -> list[tuple[str, int]]:
        """Locks ``tid`` holds, as (lock class, index) pairs (index -1 for global locks)."""
        held = [(name, -1) for name, (w, r) in zip(LOCKS, self.locks, strict=True) if w == tid or tid in r]
        held += [(FOLIO_LOCK, i) for i, owner in enumerate(self.flock) if owner == tid]
        return held

    def check_order(self, tid: int, cls: str, index: int = -1) -> None:
        """lockdep in miniature: taking ``cls`` while holding a lock that must nest inside it."""
        for held, hidx in self.held_by(tid):
            if held == cls and (cls != FOLIO_LOCK or hidx == index):
                self.violate("deadlock", f"T{tid} takes {_lname(cls, index)} it already holds (self-deadlock)")
            elif LOCK_RANK[held] > LOCK_RANK[cls] or (held == cls == FOLIO_LOCK and hidx > index):
                self.violate(
                    "deadlock",
                    f"T{tid} takes {_lname(cls, index)} while holding {_lname(held, hidx)}: "
                    "inverts the lock order slots_lock -> invalidate_lock -> gmem_rwsem -> folio_lock "
                    "(ascending index) -> mmu_lock",
                )

    def acquire(self, name: str, mode: str, tid: int) -> None:
        self.check_order(tid, name)
        i = LOCKS.index(name)
        writer, readers = self.locks[i]
        new = (tid, readers) if mode == WRITE else (writer, readers | {tid})
        self.locks = (*self.locks[:i], new, *self.locks[i + 1 :])

    def release(self, name: str, mode: str, tid: int) -> None:
        i = LOCKS.index(name)
        writer, readers = self.locks[i]
        if mode == WRITE:
            if writer != tid:
                self.violate("deadlock", f"T{tid} releases {name} (write) it does not hold")
            new = (NOBODY, readers)
        else:
            if tid not in readers:
                self.violate("deadlock", f"T{tid} releases {name} (read) it does not hold")
            new = (writer, readers - {tid})
        self.locks = (*self.locks[:i], new, *self.locks[i + 1 :])

    # -- folios and references ---------------------------------------------------------------------------
    def alloc_folio(self, index: int, tid: int) -> int:
        """Insert a fresh folio at ``index`` (page-cache reference only) and return its generation."""
        gen = self.next_gen[index]
        self.put("next_gen", index, gen + 1)
        self.put("folio", index, gen)
        self.put("uptodate", index, False)
        self.put("refcount", index, 1)
        owner = self.conv_window[index]
        if owner not in (NOBODY, tid):
            self.violate(
                "allocation_escapes_conversion",
                f"T{tid} allocates {folio_name(index, gen)} after T{owner}'s conversion looked at index "
                f"{index} and found no folio to lock/unmap/refcount-check, before it stored the new state",
            )
        return gen

    def get_ref(self, index: int) -> None:
        self.put("refcount", index, self.refcount[index] + 1)

    def put_ref(self, index: int, gen: int) -> None:
        """folio_put on generation ``gen`` (possibly already truncated from the page cache)."""
        if self.folio[index] == gen:
            count = self.refcount[index] - 1
            self.put("refcount", index, count)
            if count < 1:
                self.violate(
                    "refcount_underflow",
                    f"{folio_name(index, gen)} refcount drops to {count} while still in the page cache",
                )
            return
        for n, (i, g, count) in enumerate(self.detached):
            if (i, g) == (index, gen):
                rest = self.detached[:n] + self.detached[n + 1 :]
                self.detached = rest if count == 1 else (*rest, (i, g, count - 1))
                return
        self.violate("refcount_underflow", f"{folio_name(index, gen)} refcount drops below zero (folio_put)")

    def truncate_folio(self, index: int) -> None:
        """filemap_remove_folio: drop the page-cache reference; outstanding references keep it alive."""
        gen, count = self.folio[index], self.refcount[index] - 1
        if count > 0:
            self.detached = tuple(sorted((*self.detached, (index, gen, count))))
        elif count < 0:
            self.violate("refcount_underflow", f"{folio_name(index, gen)} refcount below zero on truncate")
        self.put("folio", index, 0)
        self.put("refcount", index, 0)
        self.put("uptodate", index, False)


def _lname(cls: str, index: int) -> str:
    return f"folio_lock({index})" if cls == FOLIO_LOCK else cls
