"""Steps: the atomic actions a kernel path performs on the shared :class:`~gmemlab.races.world.World`.

A path is a Python generator that ``yield``\\ s :class:`Step` objects; the scheduler runs one step at a
time (atomically), sends the step's result back into the generator and may switch threads at every
``yield``. Everything between two yields touches only the thread's own locals. Paths are written with the
helpers of :class:`StepCtx` (lock operations, which the mutation check can remove one *site* at a time) and the
step constructors below (shared-state accesses). A user variant is a set of such generators; see
``docs/races.md`` ("Writing your own variant").

Every step names the kernel behaviour it models in its label, e.g.
``kvm_gmem_get_pfn: filemap_grab_folio(0)``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass, field
from typing import cast

from .world import (
    FOLIO_LOCK,
    MMU_LOCK,
    NOBODY,
    PREPARED,
    PRIVATE,
    READ,
    SHARED,
    WRITE,
    World,
    folio_name,
)

Run = Callable[[World, int], Hashable]
Enabled = Callable[[World, int], bool]


@dataclass(frozen=True, eq=False)
class Step:
    """One atomic action. ``enabled`` (None = always) models blocking on a lock."""

    label: str
    run: Run
    enabled: Enabled | None = None
    site: str | None = None  # lock-acquisition site (for the mutation check)
    show_result: bool = False

    def describe(self, result: Hashable) -> str:
        if self.show_result:
            return f"{self.label} -> {_fmt(result)}"
        return self.label


@dataclass(frozen=True)
class Done:
    """The path returned (its outcome: "mapped", "SIGBUS", "EAGAIN", "RET_PF_RETRY", ...)."""

    outcome: Hashable


Path = Generator[Step, Hashable, Hashable]
PathFn = Callable[..., Path]


def _fmt(value: Hashable) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


@dataclass
class StepCtx:
    """Per-thread context handed to a path: thread id, the kernel function being modelled (``where``)
    and the lock-acquisition sites removed by the mutation check (``disabled``)."""

    tid: int
    disabled: frozenset[str] = field(default_factory=frozenset)
    where: str = ""

    def step(self, text: str, run: Run, enabled: Enabled | None = None, *, site: str | None = None,
             show_result: bool = False) -> Step:
        label = f"{self.where}: {text}" if self.where else text
        return Step(label, run, enabled, site, show_result)

    # -- sleeping locks (rw_semaphore / mutex / rwlock) --------------------------------------------------
    def lock(self, site: str, name: str, mode: str = WRITE) -> Generator[Step, Hashable, None]:
        """down_read/down_write (mutex_lock, write_lock) of ``name``; blocks while incompatible."""
        if site in self.disabled:
            return
        verb = {READ: "down_read", WRITE: "down_write"}[mode]
        if name == MMU_LOCK:
            verb = "write_lock" if mode == WRITE else "read_lock"
        elif mode == WRITE and name == "slots_lock":
            verb = "mutex_lock"

        def run(w: World, tid: int) -> None:
            w.acquire(name, mode, tid)

        yield self.step(f"{verb}({name})", run, lambda w, tid: w.can_acquire(name, mode, tid), site=site)

    def unlock(self, site: str, name: str, mode: str = WRITE) -> Generator[Step, Hashable, None]:
        if site in self.disabled:
            return
        verb = {READ: "up_read", WRITE: "up_write"}[mode]
        if name == MMU_LOCK:
            verb = "write_unlock" if mode == WRITE else "read_unlock"
        elif mode == WRITE and name == "slots_lock":
            verb = "mutex_unlock"

        def run(w: World, tid: int) -> None:
            w.release(name, mode, tid)

        yield self.step(f"{verb}({name})", run)

    # -- folio lock -------------------------------------------------------------------------------------
    def grab_folio(self, site: str, index: int, *, allocate: bool = True) -> Generator[Step, Hashable, int]:
        """filemap_grab_folio / kvm_gmem_get_folio: find the folio at ``index`` (allocating and inserting a
        fresh one if absent and ``allocate``), take a reference for the caller and lock it. Returns the
        folio generation (0 if absent and not allocating). Blocks while another thread holds the folio
        lock. With the site removed the lookup and allocation happen without the folio lock."""
        locked = site not in self.disabled

        def run(w: World, tid: int) -> int:
            gen = w.folio[index]
            if not gen:
                if not allocate:
                    return 0
                gen = w.alloc_folio(index, tid)
            w.get_ref(index)
            if locked:
                w.check_order(tid, FOLIO_LOCK, index)
                w.put("flock", index, tid)
            return gen

        def enabled(w: World, tid: int) -> bool:
            return not locked or w.flock[index] == NOBODY

        what = "filemap_grab_folio" if allocate else "filemap_lock_folio"
        text = f"{what}({index}) + folio_lock" if locked else f"{what}({index}) [no folio_lock]"
        return cast(int, (yield self.step(text, run, enabled, site=site, show_result=True)))

    def lock_folio(self, site: str, index: int) -> Generator[Step, Hashable, int]:
        """folio_lock on the folio a caller looked up earlier; returns the generation now cached."""
        if site in self.disabled:
            return 0

        def run(w: World, tid: int) -> int:
            w.check_order(tid, FOLIO_LOCK, index)
            w.put("flock", index, tid)
            return w.folio[index]

        return cast(int, (yield self.step(f"folio_lock({index})", run, lambda w, tid: w.flock[index] == NOBODY,
                                          site=site, show_result=True)))

    def unlock_folio(self, site: str, index: int) -> Generator[Step, Hashable, None]:
        if site in self.disabled:
            return

        def run(w: World, tid: int) -> None:
            if w.flock[index] != tid:
                w.violate("deadlock", f"T{tid} unlocks folio_lock({index}) it does not hold")
            w.put("flock", index, NOBODY)

        yield self.step(f"folio_unlock({index})", run)

    # -- steps done under kvm->mmu_lock taken and dropped inside the step -------------------------------
    def under_mmu_lock(self, site: str, text: str, run: Run) -> Step:
        """A short critical section under kvm->mmu_lock (write), e.g. kvm_mmu_invalidate_begin()."""
        guarded = site not in self.disabled

        def enabled(w: World, tid: int) -> bool:
            return not guarded or w.can_acquire(MMU_LOCK, WRITE, tid)

        def locked_run(w: World, tid: int) -> Hashable:
            if guarded:
                w.check_order(tid, MMU_LOCK)
            return run(w, tid)

        suffix = " [under mmu_lock]" if guarded else " [no mmu_lock]"
        return self.step(text + suffix, locked_run, enabled, site=site)


# -- shared-state accesses (one atomic step each) --------------------------------------------------------

def read_state(ctx: StepCtx, index: int, what: str = "shareability") -> Step:
    """mtree_load of the shareability/attribute of ``index`` (a racy snapshot unless a lock is held)."""
    return ctx.step(f"read {what}[{index}]", lambda w, tid: w.share[index], show_result=True)


def read_states(ctx: StepCtx, indices: tuple[int, ...], what: str = "shareability") -> Step:
    def run(w: World, tid: int) -> tuple[str, ...]:
        return tuple(w.share[i] for i in indices)

    return ctx.step(f"read {what}[{_span(indices)}] (compute work list)", run, show_result=True)


def store_state(ctx: StepCtx, index: int, value: str, what: str = "shareability") -> Step:
    """mtree_store_range / xa_store of the new state; closes this thread's conversion window."""

    def run(w: World, tid: int) -> None:
        w.put("share", index, value)
        if w.conv_window[index] == tid:
            w.put("conv_window", index, NOBODY)

    return ctx.step(f"store {what}[{index}] = {value}", run)


def lookup_folio(ctx: StepCtx, index: int, *, opens_window: bool = False) -> Step:
    """filemap_get_folio without allocation (e.g. a conversion deciding whether a folio must be locked).
    ``opens_window`` marks the ghost conversion window: from now until the conversion stores the new state
    for ``index``, an allocation at ``index`` by another thread escapes the conversion's check."""

    def run(w: World, tid: int) -> int:
        if opens_window:
            w.put("conv_window", index, tid)
        return w.folio[index]

    return ctx.step(f"filemap_get_folio({index})", run, show_result=True)


def test_uptodate(ctx: StepCtx, index: int) -> Step:
    return ctx.step(f"folio_test_uptodate({index})", lambda w, tid: w.uptodate[index], show_result=True)


def initialize_folio(ctx: StepCtx, index: int, gen: int, how: str, *, private: bool = False,
                     overwrite: bool = False) -> Step:
    """Zero / prepare / populate the folio and mark it uptodate (§2.4 step 5, §2.8 step 6, §2.9).
    Initializing a folio that is already uptodate clobbers its contents (a prepared-state violation, unless
    ``overwrite``: 7.0's populate copies the payload over whatever the folio holds), as does a *private*
    preparation (kvm_arch_gmem_prepare / populate) of an index whose state is shared."""

    def run(w: World, tid: int) -> None:
        if w.folio[index] != gen:
            w.violate("prepared_inconsistent", f"T{tid} runs {how} on {folio_name(index, gen)} after it was truncated")
            return
        if w.uptodate[index] and not overwrite:
            w.violate(
                "prepared_inconsistent",
                f"T{tid} runs {how} on {folio_name(index, gen)} which is already uptodate (initialized twice)",
            )
        if private and w.share[index] == SHARED:
            w.violate(
                "prepared_inconsistent",
                f"T{tid} runs {how} on {folio_name(index, gen)} as private memory while index {index} is shared",
            )
        w.put("uptodate", index, True)

    return ctx.step(f"{how} {folio_name(index, gen)}, folio_mark_uptodate", run)


def make_private(ctx: StepCtx, index: int, gen: int) -> Step:
    """kvm_arch_gmem_make_private (in-place conversion, linux-7.md 1.3): get_pfn hands a private index to the
    arch (SNP: RMP assignment). Doing it for an index that is shared *now* is a private preparation of shared
    memory (``prepared_inconsistent``)."""

    def run(w: World, tid: int) -> None:
        if w.share[index] == SHARED:
            w.violate("prepared_inconsistent",
                      f"T{tid} runs kvm_arch_gmem_make_private on {folio_name(index, gen)} while index {index} "
                      "is shared")

    return ctx.step(f"kvm_arch_gmem_make_private({folio_name(index, gen)})", run)


def folio_put(ctx: StepCtx, index: int, gen: int) -> Step:
    def run(w: World, tid: int) -> None:
        w.put_ref(index, gen)

    return ctx.step(f"folio_put({folio_name(index, gen)})", run)


def install_host_pte(ctx: StepCtx, index: int, gen: int) -> Step:
    """finish_fault(): install the host userspace PTE for the locked folio returned by the fault handler
    (VM_FAULT_LOCKED); the PTE takes over the fault's folio reference."""

    def run(w: World, tid: int) -> None:
        if w.host_pte[index]:
            w.put_ref(index, w.host_pte[index])  # already mapped by a racing fault: drop our reference
        else:
            w.put("host_pte", index, gen)

    return ctx.step(f"finish_fault: install host PTE -> {folio_name(index, gen)}", run)


def unmap_host(ctx: StepCtx, index: int, *, opens_window: bool = False) -> Step:
    """unmap_mapping_pages(): zap the host userspace PTEs of ``index`` in every process (drops the PTE's
    folio reference). For a conversion it is the first look at the index's folio (opens the window)."""

    def run(w: World, tid: int) -> None:
        if opens_window:
            w.put("conv_window", index, tid)
        gen = w.host_pte[index]
        if gen:
            w.put("host_pte", index, 0)
            w.put_ref(index, gen)

    return ctx.step(f"unmap_mapping_pages({index}) (zap host PTEs)", run)


def safe_refcount(ctx: StepCtx, index: int) -> Step:
    """kvm_gmem_has_safe_refcount (§2.14 step 4): true iff the folio at ``index`` (if any) holds only the
    page-cache reference, i.e. nobody has it looked up, mapped or pinned."""

    def run(w: World, tid: int) -> bool:
        return not w.folio[index] or w.refcount[index] == 1

    return ctx.step(f"kvm_gmem_has_safe_refcount({index})", run, show_result=True)


def truncate(ctx: StepCtx, index: int, gen: int, *, reset_prepared: bool = False) -> Step:
    """truncate_inode_folio under the folio lock: unmap host PTEs, remove the folio from the page cache
    (skipped if it is no longer the cached folio). Roth: resets GUEST_PREPARED to GUEST first."""

    def run(w: World, tid: int) -> bool:
        if w.folio[index] != gen:
            return False
        if reset_prepared and w.share[index] == PREPARED:
            w.put("share", index, PRIVATE)
        if w.host_pte[index]:
            pte = w.host_pte[index]
            w.put("host_pte", index, 0)
            w.put_ref(index, pte)
        w.truncate_folio(index)
        return True

    return ctx.step(f"truncate_inode_folio({folio_name(index, gen)})", run, show_result=True)


def read_mmu_seq(ctx: StepCtx) -> Step:
    """mmu_seq = kvm->mmu_invalidate_seq; smp_rmb() — captured before resolving the pfn."""
    return ctx.step("mmu_seq = mmu_invalidate_seq", lambda w, tid: w.mmu_seq, show_result=True)


def mmu_retry_check(ctx: StepCtx, index: int, seq: int) -> Step:
    """is_page_fault_stale / mmu_invalidate_retry_gfn: retry if an invalidation is in progress or the
    sequence moved since ``seq`` was captured. Must run under kvm->mmu_lock."""

    def run(w: World, tid: int) -> bool:
        return w.mmu_in_progress > 0 or w.mmu_seq != seq

    return ctx.step(f"mmu_invalidate_retry_gfn({index}, seq={seq})", run, show_result=True)


def install_spte(ctx: StepCtx, index: int, gen: int, kind: str) -> Step:
    """Install the stage-2 mapping (SPTE) for the GFN of ``index``; gen 0 = memory from userspace_addr."""
    target = folio_name(index, gen) if gen else "HVA page"

    def run(w: World, tid: int) -> None:
        w.put("spte", index, (gen, kind))

    return ctx.step(f"install {kind} SPTE -> {target}", run)


def invalidate_begin(ctx: StepCtx, site: str, indices: tuple[int, ...], only: str | None = None) -> Step:
    """kvm_gmem_invalidate_begin / kvm_mmu_invalidate_begin: mmu_invalidate_in_progress++ and zap the
    stage-2 mappings of the range (§2.11), under kvm->mmu_lock. ``only`` zaps only SPTEs of that kind (the
    in-place conversion's filter: SHARED ones going private, PRIVATE ones going shared, linux-7.md 1.2)."""

    def run(w: World, tid: int) -> None:
        w.mmu_in_progress += 1
        for i in indices:
            spte = w.spte[i]
            if only is None or (spte is not None and spte[1] == only):
                w.put("spte", i, None)

    what = "zap SPTEs" if only is None else f"zap {only} SPTEs"
    return ctx.under_mmu_lock(site, f"invalidate_begin([{_span(indices)}]): in_progress++, {what}", run)


def close_window(ctx: StepCtx, indices: tuple[int, ...]) -> Step:
    """A conversion that gives up before invalidating (in-place EAGAIN) stops looking at its indices."""

    def run(w: World, tid: int) -> None:
        for i in indices:
            if w.conv_window[i] == tid:
                w.put("conv_window", i, NOBODY)

    return ctx.step(f"give up on [{_span(indices)}]", run)


def invalidate_end(ctx: StepCtx, site: str, indices: tuple[int, ...]) -> Step:
    """kvm_mmu_invalidate_end: mmu_invalidate_seq++, then mmu_invalidate_in_progress--."""

    def run(w: World, tid: int) -> None:
        w.mmu_seq += 1
        w.mmu_in_progress -= 1
        for i in indices:  # a conversion that gave up (EAGAIN) closes its window here
            if w.conv_window[i] == tid:
                w.put("conv_window", i, NOBODY)

    return ctx.under_mmu_lock(site, f"invalidate_end([{_span(indices)}]): seq++, in_progress--", run)


def _span(indices: tuple[int, ...]) -> str:
    if len(indices) == 1:
        return str(indices[0])
    return f"{indices[0]}..{indices[-1]}"


__all__ = [
    "PREPARED",
    "PRIVATE",
    "SHARED",
    "Done",
    "Path",
    "PathFn",
    "Step",
    "StepCtx",
    "close_window",
    "folio_put",
    "initialize_folio",
    "install_host_pte",
    "install_spte",
    "invalidate_begin",
    "invalidate_end",
    "lookup_folio",
    "make_private",
    "mmu_retry_check",
    "read_mmu_seq",
    "read_state",
    "read_states",
    "safe_refcount",
    "store_state",
    "test_uptodate",
    "truncate",
    "unmap_host",
]
