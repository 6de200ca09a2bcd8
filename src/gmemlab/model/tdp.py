"""The x86 TDP fault for guest_memfd-backed gfns: ``kvm_gmem_get_pfn`` -> level -> map (workloads.md 2.1).

:func:`kvm_tdp_map` is one fault (``kvm_tdp_page_fault`` after the routing checks of
:func:`gmemlab.model.page_fault.kvm_mmu_page_fault`): get the pfn and ``max_order`` from guest_memfd,
pick the level (:func:`gmemlab.model.mmu.kvm_mmu_max_mapping_level`), let the vendor cap it and prepare
(:mod:`gmemlab.model.vendor`), and install one leaf.

:func:`kvm_tdp_map_range` is the faults a vCPU takes touching a range, decided in runs rather than leaf by
leaf: within one 1 GiB region every input of the level decision is per 2 MiB or coarser (the folio, the
shareability and attributes around the gfn, ``lpage_info``, the SNP RMP entry, TDX's GUEST_INHIBIT), so
when one real fault has decided the first leaf and those inputs are the same over the rest of the region,
the rest gets the same decision in one store, with the same counters as one fault per leaf. Otherwise it
faults leaf by leaf, runs of 4 KiB faults in one step (:func:`_map_run_4k`). The simulator's per-page
reference run checks it against one :func:`kvm_tdp_map` per page.
"""

from __future__ import annotations

from ..level import Level
from ..uapi import KVM_MEM_LOG_DIRTY_PAGES
from .kvm_host import Kvm
from .memslot import Memslot
from .mmu import kvm_mmu_max_mapping_level


def kvm_tdp_map(vm: Kvm, slot: Memslot, gfn: int, is_private: bool,
                max_level: Level = Level.PG_1G) -> tuple[int, int, Level]:
    """Fault ``gfn`` in from guest_memfd; returns ``(first gfn, pages, level)`` of the leaf installed.
    ``max_level`` is ``fault->max_level`` (a TDX guest's ACCEPT level caps it).

    Raises :class:`gmemlab.errors.GmemError` when ``kvm_gmem_get_pfn`` fails.
    """
    file = slot.gmem_file
    assert file is not None
    index = gfn - slot.base_gfn + slot.gmem_pgoff
    order = file.get_pfn(slot, gfn)
    level = kvm_mmu_max_mapping_level(vm, slot, gfn, is_private, order, max_level)
    if is_private:
        level = vm.vendor.private_level(file.inode, gfn, index, level, file.inode.folio_level(index))
    first = level.align_down(gfn)
    vm.stage2.map(first, level.pages, is_private, level)
    return first, level.pages, level


def _map_run_4k(vm: Kvm, slot: Memslot, start: int, end: int, private: bool) -> None:
    """``end - start`` 4 KiB faults that all decide 4 KiB (one 2M range, one private/shared state)."""
    file = slot.gmem_file
    assert file is not None
    index = start - slot.base_gfn + slot.gmem_pgoff
    file.inode.prepare_run(index, index + (end - start))
    if private:
        vm.vendor.private_run_4k(file.inode, start, index, end - start)
    vm.stage2.map(start, end - start, private, Level.PG_4K, faults=end - start)


def kvm_tdp_map_range(vm: Kvm, slot: Memslot, start: int, end: int, is_private: bool,
                      max_level: Level = Level.PG_1G) -> None:
    """Fault in every unmapped gfn of ``[start, end)``, all of one private/shared state, inside ``slot``
    (see the module docstring). Raises :class:`gmemlab.errors.GmemError` at the first gfn
    ``kvm_gmem_get_pfn`` refuses, like the vCPU stopping there."""
    s2 = vm.stage2
    for a, b, spte in list(s2.sptes.runs(start, end)):
        if spte is not None:
            continue
        x = a
        while x < b:
            leaf = s2.lookup(x)
            if leaf is not None:  # covered by a huge leaf installed earlier in this call
                x = leaf.level.align_down(x) + leaf.level.pages
                continue
            first, pages, level = kvm_tdp_map(vm, slot, x, is_private, max_level)
            nxt = first + pages
            if level == Level.PG_1G:
                x = nxt
                continue
            region_end = min(b, Level.PG_1G.align_down(x) + Level.PG_1G.pages)
            if nxt < region_end:
                done = _map_like(vm, slot, first, nxt, region_end, level, is_private, max_level)
                if done > nxt:
                    x = done
                    continue
            if level == Level.PG_4K and nxt < b:  # the rest of this 2 MiB range decides 4K too
                run_end = min(b, Level.PG_2M.align_down(x) + Level.PG_2M.pages, _same_state_end(vm, slot, x, b))
                if run_end > nxt:
                    _map_run_4k(vm, slot, nxt, run_end, is_private)
                    nxt = run_end
            x = nxt


def _same_state_end(vm: Kvm, slot: Memslot, gfn: int, limit: int) -> int:
    """End of the run of gfns from ``gfn`` (below ``limit``) with the same ``kvm_mem_is_private``."""
    if slot.gmem_tracks_shareability and slot.gmem_file is not None:
        base = slot.base_gfn - slot.gmem_pgoff
        runs = slot.gmem_file.inode.shareability.runs(gfn - base, limit - base)
        end = runs[0][1] + base if runs else limit
    else:
        end = next(iter(vm.attributes.runs(gfn, limit)))[1]
    return min(end, limit)


def _map_like(vm: Kvm, slot: Memslot, probe: int, p: int, q: int, level: Level, is_private: bool,
              max_level: Level) -> int:
    """Leaves of ``level`` over ``[p, q)`` as the fault at ``[probe, p)`` decided, when every input of the
    decision is the same over ``[probe, q)`` (one 1 GiB region); returns where it stopped (``p``: nothing
    done, the caller faults leaf by leaf).

    2M leaves need, per 2 MiB: the same shareability and attributes (no MIXED lpage), the same folio shape,
    and the vendor's state (SNP RMP unassigned or 2M, TDX not inhibited). 4K leaves are taken in bulk only
    when every fault must decide 4K whatever the state: 4 KiB folios, a 4K TDP cap, a vendor that maps
    private memory at 4K only, or ``max_level`` 4K; and the vendor must agree (no SNP 2M RMP entry left, each
    of which is PSMASHed by its own fault). Folios are prepared one per fault, as ``kvm_gmem_get_pfn`` would.
    """
    file = slot.gmem_file
    assert file is not None
    pmd = Level.PG_2M
    if (slot.base_gfn ^ slot.gmem_pgoff) % pmd.pages:
        return p  # gfn vs guest_memfd offset misaligned: disallow_lpage for every 2 MiB
    for edge in (slot.base_gfn, slot.end_gfn):  # the memslot's partial head/tail 2 MiB pages decide alone
        if edge % pmd.pages and pmd.align_down(edge - (edge == slot.end_gfn)) < q and \
                probe < pmd.align_down(edge - (edge == slot.end_gfn)) + pmd.pages:
            return p
    if slot.flags & KVM_MEM_LOG_DIRTY_PAGES and level != Level.PG_4K:
        return p
    if level == Level.PG_2M:
        q = pmd.align_down(q)
        if q <= p:
            return p
    inode = file.inode
    base = slot.base_gfn - slot.gmem_pgoff
    i_probe, ip, iq = probe - base, p - base, q - base
    runs = inode.shareability.runs(i_probe, iq)
    if len(runs) != 1 or runs[0][2] == is_private:  # shared == private: the state changed under the range
        return p
    attrs = vm.attributes.runs(probe, q)
    next(attrs)
    if next(attrs, None) is not None:  # KVM_LPAGE_MIXED_FLAG could differ per 2 MiB
        return p
    huge = inode.huge
    folio = Level.PG_4K
    if huge is not None:
        uniform = huge.uniform_folio_level(i_probe, iq)
        if uniform is None:
            return p
        folio = uniform
    vendor = vm.vendor
    n = q - p
    if level == Level.PG_4K:
        forced = (folio == Level.PG_4K or vm.config.tdp_max_level == Level.PG_4K or max_level == Level.PG_4K
                  or (is_private and vendor.private_max_level() == Level.PG_4K))
        if not forced or (is_private and not vendor.private_run(inode, p, ip, n, level)):
            return p
        inode.prepare_run(ip, iq)
        vm.stage2.map(p, n, is_private, level, faults=n)
        return q
    if is_private and not vendor.private_run(inode, p, ip, n, level):
        return p
    if huge is not None and folio == Level.PG_2M:
        huge.prepare_folios(ip, iq, pmd)  # one fault per 2 MiB folio
    vm.stage2.map(p, n, is_private, level, faults=n // level.pages)
    return q
