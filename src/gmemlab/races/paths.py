"""The kernel paths, written once and parameterised by a variant's locking rules (:class:`Locking`).

Each function is a generator over :class:`~gmemlab.races.steps.Step` objects; see ``steps.py`` for the
protocol. The docstrings name the kernel functions modelled and the spec sections (``/work/shared/spec/
guest_memfd.md``) they follow. Lock-acquisition *sites* are named ``<path>.<lock>``; the mutation check
removes one site (the acquisition and its matching release) at a time.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import cast

from .steps import (
    Path,
    StepCtx,
    close_window,
    folio_put,
    initialize_folio,
    install_host_pte,
    install_spte,
    invalidate_begin,
    invalidate_end,
    lookup_folio,
    make_private,
    mmu_retry_check,
    read_mmu_seq,
    read_state,
    read_states,
    safe_refcount,
    store_state,
    test_uptodate,
    truncate,
    unmap_host,
)
from .world import GMEM_RWSEM, INVALIDATE_LOCK, MMU_LOCK, PREPARED, PRIVATE, READ, SHARED, SLOTS_LOCK, WRITE


@dataclass(frozen=True)
class Locking:
    """What distinguishes the protocol variants (spec §2.13, §4 "Locking" row, §5.9)."""

    per_index: bool = True  # False: linux-6.18 (per-VM attributes, whole-file host faultability)
    fault_lock: str | None = INVALIDATE_LOCK  # held shared by get_pfn, host fault and allocate
    lookup_locked: bool = False  # kvm_gmem_is_private lookups under fault_lock (IPC26, Roth)
    check_under_folio_lock: bool = False  # host fault checks shareability under the folio lock (Roth)
    conversion_lock: str = INVALIDATE_LOCK  # taken exclusive by conversions
    conversion_folio_lock: bool = False  # per-index updates under the folio lock when a folio exists (Roth)
    prepared_state: bool = False  # SHAREABILITY_GUEST_PREPARED set at fault time (Roth)
    strict_refcount: bool = False  # to-private counts transient references (in-flight lookups) too
    allocators_take_rwsem: bool = False  # populate/allocate also hold gmem_rwsem shared (Roth)
    # In-place conversion as queued for 7.4 (series v13, linux-7.md 1.2-1.3):
    check_before_invalidate: bool = False  # to private: unmap + reference check first, EAGAIN before invalidating
    whole_range: bool = False  # no-op only if the whole range has the value; else the whole range is converted
    filtered_invalidation: bool = False  # zap only the SPTEs of the kind that must go (SHARED / PRIVATE filter)
    make_private_hook: bool = False  # get_pfn calls kvm_arch_gmem_make_private for a private index (under lock)
    populate_eexist: bool = True  # up to 6.19 populate refuses an uptodate folio; 7.0 overwrites it


def _kind(state: Hashable) -> str:
    return "shared" if state == SHARED else "private"


# -- guest fault: kvm_mmu_faultin_pfn -> kvm_gmem_get_pfn -> install SPTE ------------------------------------

def guest_fault(ctx: StepCtx, lk: Locking, indices: tuple[int, ...]) -> Path:
    """Guest (stage-2) fault on the GFN backed by ``index``: x86 kvm_tdp_page_fault (§2.7, §2.8).

    1. ``mmu_seq = mmu_invalidate_seq`` is captured first (MMU-notifier protocol).
    2. ``kvm_mem_is_private`` reads the state: a racy snapshot (linux-6.18 per-VM attributes, RFC2
       ``kvm_gmem_is_private``), or under the fault lock (IPC26 external lock, Roth's rw_semaphore).
    3. ``kvm_gmem_get_pfn``: fault lock shared (RFC2/IPC26/Roth; none upstream, §2.13), the folio is looked up
       or allocated and locked, prepared if not uptodate (§2.8 step 6; Roth also records GUEST_PREPARED
       under the folio lock), unlocked; the caller keeps a reference (§2.8 step 7). linux-6.18 serves a
       shared GFN from userspace_addr instead (HVA path, no guest_memfd folio).
    4. Under ``mmu_lock`` (read, as the TDP MMU does): ``mmu_invalidate_retry_gfn`` — retry (RET_PF_RETRY)
       if an invalidation is in progress or the sequence moved — else install the SPTE; then release the
       page reference.
    """
    (index,) = indices
    ctx.where = "kvm_tdp_page_fault"
    seq = cast(int, (yield read_mmu_seq(ctx)))
    what = "shareability" if lk.per_index else "attributes"
    if lk.lookup_locked and lk.fault_lock:
        ctx.where = "kvm_gmem_is_private"
        yield from ctx.lock("is_private." + lk.fault_lock, lk.fault_lock, READ)
        state = yield read_state(ctx, index, what)
        yield from ctx.unlock("is_private." + lk.fault_lock, lk.fault_lock, READ)
    else:
        ctx.where = "kvm_mem_is_private"
        state = yield read_state(ctx, index, what)
    kind = _kind(state)
    gen = 0
    if lk.per_index or kind == "private":
        ctx.where = "kvm_gmem_get_pfn"
        if lk.fault_lock:
            yield from ctx.lock("get_pfn." + lk.fault_lock, lk.fault_lock, READ)
        gen = yield from ctx.grab_folio("get_pfn.folio_lock", index)
        if lk.prepared_state:
            now = yield read_state(ctx, index)
            if not (yield test_uptodate(ctx, index)):
                yield initialize_folio(ctx, index, gen, "kvm_gmem_prepare_folio", private=now != SHARED)
            if now == PRIVATE:
                yield store_state(ctx, index, PREPARED)
        elif not (yield test_uptodate(ctx, index)):
            yield initialize_folio(ctx, index, gen, "kvm_gmem_get_folio: zero on first use"
                                   if lk.make_private_hook else "kvm_gmem_prepare_folio")
        if lk.make_private_hook and (yield read_state(ctx, index, what)) != SHARED:
            yield make_private(ctx, index, gen)
        yield from ctx.unlock_folio("get_pfn.folio_lock", index)
        if lk.fault_lock:
            yield from ctx.unlock("get_pfn." + lk.fault_lock, lk.fault_lock, READ)
    ctx.where = "kvm_tdp_page_fault"
    yield from ctx.lock("guest_fault.mmu_lock", MMU_LOCK, READ)
    if (yield mmu_retry_check(ctx, index, seq)):
        yield from ctx.unlock("guest_fault.mmu_lock", MMU_LOCK, READ)
        if gen:
            yield folio_put(ctx, index, gen)
        return "RET_PF_RETRY"
    yield install_spte(ctx, index, gen, kind)
    yield from ctx.unlock("guest_fault.mmu_lock", MMU_LOCK, READ)
    if gen:
        yield folio_put(ctx, index, gen)
    return f"mapped {kind}"


# -- host fault: kvm_gmem_fault_shared / kvm_gmem_fault_user_mapping + finish_fault ---------------------------

def host_fault(ctx: StepCtx, lk: Locking, indices: tuple[int, ...]) -> Path:
    """Host userspace page fault on the guest_memfd mmap at ``index`` (§2.4).

    linux-6.18 (kvm_gmem_fault_user_mapping): SIGBUS unless the file is INIT_SHARED; no invalidate lock.
    RFC2 (kvm_gmem_fault_shared): invalidate_lock shared around the shareability check and the folio lookup
    only (zeroing a not-uptodate folio happens after the unlock, under the folio lock); the PTE is installed
    by the mm's finish_fault() after the handler returned VM_FAULT_LOCKED, i.e. after the lock is dropped
    (the TOCTOU of §5.9).
    IPC26: same lock scope as RFC2; the fault's folio reference, taken under the lock, is what makes a
    racing to-private conversion fail its refcount check (Sean Christopherson, RFC2 02/51 review).
    Roth: rw_semaphore shared while the folio is allocated; the check is made under the folio lock, which is
    held until finish_fault.
    In every variant a not-uptodate folio is zeroed and marked uptodate (§2.4 step 5).
    """
    (index,) = indices
    ctx.where = "kvm_gmem_fault_shared" if lk.per_index else "kvm_gmem_fault_user_mapping"
    site = f"host_fault.{lk.fault_lock}"
    if not lk.per_index:
        if not (yield ctx.step("check GUEST_MEMFD_FLAG_INIT_SHARED", lambda w, tid: w.init_shared,
                                show_result=True)):
            return "SIGBUS"
    elif lk.fault_lock:
        yield from ctx.lock(site, lk.fault_lock, READ)
    if lk.per_index and not lk.check_under_folio_lock:
        state = yield read_state(ctx, index)
        if state != SHARED:
            if lk.fault_lock:
                yield from ctx.unlock(site, lk.fault_lock, READ)
            return "SIGBUS"
    gen = yield from ctx.grab_folio("host_fault.folio_lock", index)
    if lk.check_under_folio_lock:
        state = yield read_state(ctx, index)
        if state != SHARED:
            yield from ctx.unlock_folio("host_fault.folio_lock", index)
            yield folio_put(ctx, index, gen)
            if lk.fault_lock:
                yield from ctx.unlock(site, lk.fault_lock, READ)
            return "SIGBUS"
    if lk.per_index and lk.fault_lock:
        yield from ctx.unlock(site, lk.fault_lock, READ)
    if not (yield test_uptodate(ctx, index)):
        yield initialize_folio(ctx, index, gen, "clear_highpage")
    ctx.where = "do_shared_fault"
    yield install_host_pte(ctx, index, gen)
    yield from ctx.unlock_folio("host_fault.folio_lock", index)
    return "mapped"


# -- conversion: KVM_GMEM_CONVERT_* (RFC2), KVM_SET_MEMORY_ATTRIBUTES2 (IPC26), KVM_SET_MEMORY_ATTRIBUTES ------

def convert(ctx: StepCtx, lk: Locking, indices: tuple[int, ...], target: str) -> Path:
    """Conversion of ``indices`` to ``target`` (§2.14 "Conversion algorithm"; §2.7 for linux-6.18).

    Per-index variants: conversion lock exclusive; compute the work list; invalidate_begin (zap SPTEs,
    in_progress++); for every index "should proceed" — to private: unmap host PTEs then the safe-refcount
    check (EAGAIN on failure), Roth: look the folio up and lock it if present; store the new state;
    invalidate_end; unlock.
    linux-6.18 (kvm_vm_set_mem_attributes): kvm->slots_lock; pre-set range (invalidate_begin + zap under
    mmu_lock); xa_store of the attributes; post-set range (invalidate_end); no guest_memfd lock at all; EINVAL
    on an INIT_SHARED file (VM without private memory).
    """
    if lk.check_before_invalidate:
        return (yield from convert_in_place(ctx, lk, indices, target))
    ctx.where = "kvm_gmem_convert" if lk.per_index else "kvm_vm_set_mem_attributes"
    lock = lk.conversion_lock if lk.per_index else SLOTS_LOCK
    site = f"convert.{lock}"
    what = "shareability" if lk.per_index else "attributes"
    yield from ctx.lock(site, lock, WRITE)
    if not lk.per_index and (yield ctx.step("INIT_SHARED file (VM without private memory)?",
                                            lambda w, tid: w.init_shared, show_result=True)):
        yield from ctx.unlock(site, lock, WRITE)
        return "EINVAL"
    current = cast(tuple[str, ...], (yield read_states(ctx, indices, what)))
    work = tuple(i for i, s in zip(indices, current, strict=True) if _kind(s) != _kind(target))
    if not work:
        yield from ctx.unlock(site, lock, WRITE)
        return "0 (nothing to do)"
    yield invalidate_begin(ctx, "convert.mmu_lock", work)
    locked: list[int] = []
    for i in work:
        if not lk.per_index:
            continue
        if lk.conversion_folio_lock and (yield lookup_folio(ctx, i, opens_window=True)):
            yield from ctx.lock_folio("convert.folio_lock", i)
            locked.append(i)
        if target == PRIVATE:
            yield unmap_host(ctx, i, opens_window=not lk.conversion_folio_lock)
            if lk.strict_refcount and not (yield safe_refcount(ctx, i)):
                for j in locked:
                    yield from ctx.unlock_folio("convert.folio_lock", j)
                yield invalidate_end(ctx, "convert.mmu_lock", work)
                yield from ctx.unlock(site, lock, WRITE)
                return "EAGAIN"
    for i in work:
        yield store_state(ctx, i, target, what)
    for j in locked:
        yield from ctx.unlock_folio("convert.folio_lock", j)
    yield invalidate_end(ctx, "convert.mmu_lock", work)
    yield from ctx.unlock(site, lock, WRITE)
    return "0"


def convert_in_place(ctx: StepCtx, lk: Locking, indices: tuple[int, ...], target: str) -> Path:
    """``kvm_gmem_set_attributes`` step 9 (in-place conversion v13, linux-7.md 1.2), after the argument checks:

    1. invalidate_lock exclusive;
    2. the whole range already has the value: return 0, no unmap and no invalidation;
    3. to private: unmap the host PTEs of the range, *then* check every folio's references: EAGAIN (before
       any invalidation) if one has more than the page cache's;
    4. invalidate_begin with the filter: SHARED SPTEs going private, PRIVATE ones going shared;
    5. to shared: kvm_arch_gmem_make_shared per folio (no shared state it could break here);
    6. store the value for the whole range; invalidate_end; unlock.
    """
    ctx.where = "kvm_gmem_set_attributes"
    lock = lk.conversion_lock
    site = f"convert.{lock}"
    yield from ctx.lock(site, lock, WRITE)
    current = cast(tuple[str, ...], (yield read_states(ctx, indices)))
    if all(_kind(s) == _kind(target) for s in current):
        yield from ctx.unlock(site, lock, WRITE)
        return "0 (nothing to do)"
    work = indices if lk.whole_range else tuple(i for i, s in zip(indices, current, strict=True)
                                                if _kind(s) != _kind(target))
    if target == PRIVATE:
        for i in work:
            yield unmap_host(ctx, i, opens_window=True)
        for i in work:
            if lk.strict_refcount and not (yield safe_refcount(ctx, i)):
                yield close_window(ctx, work)
                yield from ctx.unlock(site, lock, WRITE)
                return "EAGAIN"
    only = ("shared" if target == PRIVATE else "private") if lk.filtered_invalidation else None
    yield invalidate_begin(ctx, "convert.mmu_lock", work, only)
    if target == SHARED:
        for i in work:
            yield ctx.step(f"kvm_arch_gmem_make_shared({i})", lambda w, tid: None)
    for i in work:
        yield store_state(ctx, i, target)
    yield invalidate_end(ctx, "convert.mmu_lock", work)
    yield from ctx.unlock(site, lock, WRITE)
    return "0"


def convert_roundtrip(ctx: StepCtx, lk: Locking, indices: tuple[int, ...]) -> Path:
    """The host thread of ``gmem_convert_fault_race`` (linux-7.md 1.4): convert the range to shared, then back
    to private (the selftest sleeps 10 us between the two and loops; one round here)."""
    first = yield from convert(ctx, lk, indices, SHARED)
    second = yield from convert(ctx, lk, indices, PRIVATE)
    return f"shared: {first}; private: {second}"


def convert_private(ctx: StepCtx, lk: Locking, indices: tuple[int, ...]) -> Path:
    """KVM_GMEM_CONVERT_PRIVATE (RFC2) / attributes PRIVATE (IPC26, linux-6.18); see :func:`convert`."""
    return (yield from convert(ctx, lk, indices, PRIVATE))


def convert_shared(ctx: StepCtx, lk: Locking, indices: tuple[int, ...]) -> Path:
    """KVM_GMEM_CONVERT_SHARED (RFC2) / attributes shared (IPC26, linux-6.18); see :func:`convert`."""
    return (yield from convert(ctx, lk, indices, SHARED))


# -- punch hole: kvm_gmem_punch_hole ---------------------------------------------------------------------------

def punch_hole(ctx: StepCtx, lk: Locking, indices: tuple[int, ...]) -> Path:
    """fallocate(PUNCH_HOLE|KEEP_SIZE) (§2.5): invalidate_lock exclusive; invalidate_begin (zap SPTEs);
    truncate each folio under its folio lock (unmap host PTEs, remove from the page cache; Roth resets
    GUEST_PREPARED to GUEST there); invalidate_end. Never changes the shared/private state."""
    ctx.where = "kvm_gmem_punch_hole"
    yield from ctx.lock("punch_hole.invalidate_lock", INVALIDATE_LOCK, WRITE)
    yield invalidate_begin(ctx, "punch_hole.mmu_lock", indices)
    for i in indices:
        gen = cast(int, (yield lookup_folio(ctx, i)))
        if not gen:
            continue
        yield from ctx.lock_folio("punch_hole.folio_lock", i)
        yield truncate(ctx, i, gen, reset_prepared=lk.prepared_state)
        yield from ctx.unlock_folio("punch_hole.folio_lock", i)
    yield invalidate_end(ctx, "punch_hole.mmu_lock", indices)
    yield from ctx.unlock("punch_hole.invalidate_lock", INVALIDATE_LOCK, WRITE)
    return "0"


# -- populate: kvm_gmem_populate (SNP_LAUNCH_UPDATE / TDX_INIT_MEM_REGION) ------------------------------------

def populate(ctx: StepCtx, lk: Locking, indices: tuple[int, ...]) -> Path:
    """kvm_gmem_populate (§2.9, U6.19 semantics): the caller holds kvm->slots_lock; invalidate_lock
    exclusive; get (allocate) and lock the folio; EEXIST if already prepared (uptodate); EINVAL unless the
    GFN is private (per-VM attributes, or gmem shareability in RFC2); copy/encrypt the payload and mark it
    prepared (Roth: GUEST_PREPARED). Roth: also holds the rw_semaphore shared (an allocating path)."""
    (index,) = indices
    ctx.where = "kvm_gmem_populate"
    yield from ctx.lock("populate.slots_lock", SLOTS_LOCK, WRITE)
    yield from ctx.lock("populate.invalidate_lock", INVALIDATE_LOCK, WRITE)
    if lk.allocators_take_rwsem:
        yield from ctx.lock("populate.gmem_rwsem", GMEM_RWSEM, READ)
    gen = yield from ctx.grab_folio("populate.folio_lock", index)
    result = "1 (populated)"
    if lk.populate_eexist and (yield test_uptodate(ctx, index)):
        result = "EEXIST"
    elif (yield read_state(ctx, index, "shareability" if lk.per_index else "attributes")) == SHARED:
        result = "EINVAL"
    else:
        yield initialize_folio(ctx, index, gen, "post_populate (copy+encrypt)", private=True,
                               overwrite=not lk.populate_eexist)
        if lk.prepared_state:
            yield store_state(ctx, index, PREPARED)
    yield from ctx.unlock_folio("populate.folio_lock", index)
    yield folio_put(ctx, index, gen)
    if lk.allocators_take_rwsem:
        yield from ctx.unlock("populate.gmem_rwsem", GMEM_RWSEM, READ)
    yield from ctx.unlock("populate.invalidate_lock", INVALIDATE_LOCK, WRITE)
    yield from ctx.unlock("populate.slots_lock", SLOTS_LOCK, WRITE)
    return result


# -- allocate: fallocate(KEEP_SIZE) ---------------------------------------------------------------------------

def allocate(ctx: StepCtx, lk: Locking, indices: tuple[int, ...]) -> Path:
    """fallocate(KEEP_SIZE) / kvm_gmem_allocate (§2.5): invalidate_lock shared; make sure a folio exists
    at every index (not zeroed, not uptodate). Roth: also the rw_semaphore shared (an allocating path)."""
    ctx.where = "kvm_gmem_allocate"
    yield from ctx.lock("allocate.invalidate_lock", INVALIDATE_LOCK, READ)
    if lk.allocators_take_rwsem:
        yield from ctx.lock("allocate.gmem_rwsem", GMEM_RWSEM, READ)
    for i in indices:
        gen = yield from ctx.grab_folio("allocate.folio_lock", i)
        yield from ctx.unlock_folio("allocate.folio_lock", i)
        yield folio_put(ctx, i, gen)
    if lk.allocators_take_rwsem:
        yield from ctx.unlock("allocate.gmem_rwsem", GMEM_RWSEM, READ)
    yield from ctx.unlock("allocate.invalidate_lock", INVALIDATE_LOCK, READ)
    return "0"
