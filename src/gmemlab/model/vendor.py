"""Vendor limits on private stage-2 mappings and the arch prepare/invalidate hooks (workloads.md 2.1).

One object per VM (:func:`vendor_for`), asked by the fault path after the generic level selection. It
gets the VM's stage-2 tables and the counters at creation, and the inode (its number and size) and the
gfn ranges concerned on every call:

* :class:`NoVendor` (default, SW_PROTECTED, SEV, SEV-ES VMs): no cap, no hooks.
* :class:`SnpRmp` (SNP VMs): ``sev_gmem_max_mapping_level`` (``sev_private_max_mapping_level`` before 6.18)
  = the level of the RMP entry, at most 2M (no 1G RMP entries; ``HostConfig.snp_rmp_max_level`` 4K: a
  what-if with 4K entries only). ``sev_gmem_prepare`` makes a 2M entry only when the folio is >= 2M and all 512
  entries of the aligned 2M are unassigned, otherwise 4K entries -- so the RMP level depends on history.
  An NPT mapping smaller than a 2M RMP entry triggers ``sev_handle_rmp_fault``: PSMASH (2M -> 512 x 4K)
  and ``kvm_zap_gfn_range`` of the 2M gfn range (step 8). ``sev_gmem_invalidate`` (to-shared conversion,
  free) returns entries to shared: one RMPUPDATE per whole 2M entry, PSMASH first for partly covered ones.
  The RMP is per page of memory, kept per inode as a range map (unassigned / 4K / 2M).
* :class:`Tdx` (TDX VMs): 4K upstream; Yan Zhao's v3 (``HostConfig.tdx_huge_private``): 2M at runtime
  following the accept level, one-way GUEST_INHIBIT, demote on conversion, punch and accept mismatch.

Counters (:mod:`gmemlab.model.metrics`, also ``metrics()["arch"]``): ``rmpupdate_4k``, ``rmpupdate_2m``,
``psmash``, ``tdx_demote`` (2M leaves split), ``tdx_guest_inhibit`` (2M ranges inhibited).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..level import Level
from ..rangemap import RangeMap
from ..uapi import VmType
from .config import HostConfig
from .metrics import Metrics
from .stage2 import GFN_LIMIT, Stage2

GfnRanges = Callable[[int, int], list[tuple[int, int]]]  # file indices -> the gfn ranges bound to them


class VendorInode(Protocol):
    """What a vendor needs of a guest_memfd inode: which one it is and how many pages it has."""

    @property
    def ino(self) -> int: ...

    @property
    def npages(self) -> int: ...

RMP_SHARED, RMP_4K, RMP_2M = 0, 1, 2
PMD = Level.PG_2M  # RMP entries, S-EPT demotion and PSMASH work per 2 MiB


class NoVendor:
    """No vendor constraints (non-CoCo, SW_PROTECTED)."""

    name = "none"

    def __init__(self, stage2: Stage2, metrics: Metrics, config: HostConfig) -> None:
        self.stage2 = stage2
        self.metrics = metrics

    def private_level(self, inode: VendorInode, gfn: int, index: int, level: Level, folio_level: Level) -> Level:
        """Cap (and prepare for) a private mapping of ``level`` at ``gfn``; returns the final level."""
        return level

    def private_run_4k(self, inode: VendorInode, gfn: int, index: int, n: int) -> None:
        """A batch of ``n`` private 4K mappings inside one 2M range."""

    def post_populate(self, inode: VendorInode, gfn: int, index: int, n: int) -> None:
        """The arch side of ``kvm_gmem_populate`` for ``n`` pages from ``gfn`` (always 4K)."""

    def before_zap(self, start: int, end: int) -> None:
        """gfns ``[start, end)`` are about to be invalidated (conversion, punch): a vendor that must split
        huge leaves first does it here."""

    def private_max_level(self) -> Level:
        """The largest private leaf the vendor ever allows (the fault's hardware cap applies besides)."""
        return Level.PG_1G

    def private_run(self, inode: VendorInode, gfn: int, index: int, n: int, level: Level) -> bool:
        """``n`` pages of private leaves of ``level`` from ``gfn`` (file ``index``), decided like one fault
        decided the first: prepare them all, or return False (nothing done) when the vendor's state is not
        the same over the run, so every leaf must fault on its own (:func:`gmemlab.model.tdp.kvm_tdp_map_range`)."""
        return True

    def gmem_invalidate(self, inode: VendorInode, start: int, end: int, gfn_ranges: GfnRanges) -> None:
        """File indices ``[start, end)`` go back to shared (conversion) or are freed; ``gfn_ranges(start,
        end)`` gives the gfns this VM has bound to them (asked only by vendors that need it)."""


class SnpRmp(NoVendor):
    """AMD SEV-SNP: RMP entries of 4K or 2M, history-dependent, PSMASH on mismatch."""

    name = "snp"

    def __init__(self, stage2: Stage2, metrics: Metrics, config: HostConfig) -> None:
        super().__init__(stage2, metrics, config)
        self.rmp: dict[int, RangeMap[int]] = {}
        self.max_level = min(config.snp_rmp_max_level, Level.PG_2M)  # no 1G RMP entries

    def table(self, inode: VendorInode) -> RangeMap[int]:
        rmp = self.rmp.get(inode.ino)
        if rmp is None:
            rmp = self.rmp[inode.ino] = RangeMap(inode.npages, RMP_SHARED)
        return rmp

    def psmash(self, inode: VendorInode, gfn: int, index: int) -> None:
        """PSMASH the 2M entry holding ``index`` and zap its 2M gfn range (``sev_handle_rmp_fault``)."""
        lo = PMD.align_down(index)
        self.table(inode).store(lo, lo + PMD.pages, RMP_4K)
        self.metrics.add("psmash")
        g = gfn - (index - lo)
        self.stage2.zap(g, g + PMD.pages)

    def private_level(self, inode: VendorInode, gfn: int, index: int, level: Level, folio_level: Level) -> Level:
        rmp = self.table(inode)
        level = min(level, self.max_level)  # SEV's max_level_for_order: no 1G RMP entries
        if level == Level.PG_2M:
            lo = PMD.align_down(index)
            runs = list(rmp.runs(lo, lo + PMD.pages))
            if len(runs) == 1 and runs[0][2] == RMP_SHARED and folio_level >= Level.PG_2M:
                rmp.store(lo, lo + PMD.pages, RMP_2M)  # sev_gmem_prepare: is_large_rmp_possible
                self.metrics.add("rmpupdate_2m")
                return Level.PG_2M
            if len(runs) == 1 and runs[0][2] == RMP_2M:
                return Level.PG_2M
        value = rmp.load(index)
        if value == RMP_2M:
            self.psmash(inode, gfn, index)
        elif value == RMP_SHARED:
            rmp.store(index, index + 1, RMP_4K)
            self.metrics.add("rmpupdate_4k")
        return Level.PG_4K

    def post_populate(self, inode: VendorInode, gfn: int, index: int, n: int) -> None:
        # sev_gmem_post_populate: rmp_make_private at 4K per page (then the PSP's SNP_LAUNCH_UPDATE)
        for g in range(gfn, gfn + n, PMD.pages) if n else ():
            piece = min(PMD.align_down(g) + PMD.pages, gfn + n) - g
            self.private_run_4k(inode, g, index + (g - gfn), piece)

    def private_max_level(self) -> Level:
        return self.max_level

    def private_run(self, inode: VendorInode, gfn: int, index: int, n: int, level: Level) -> bool:
        rmp = self.table(inode)
        if level == Level.PG_2M:
            runs = rmp.runs(index, index + n)
            _, _, value = next(runs)
            if next(runs, None) is not None or value == RMP_4K:
                return False  # each 2M range decides from its own RMP entries
            if value == RMP_SHARED:  # sev_gmem_prepare: is_large_rmp_possible for each 2M
                rmp.store(index, index + n, RMP_2M)
                self.metrics.add("rmpupdate_2m", n // PMD.pages)
            return True
        if rmp.any_match(index, index + n, lambda v: v == RMP_2M):
            return False  # each 2M entry left is PSMASHed by its own fault
        todo = rmp.count(index, index + n, lambda v: v == RMP_SHARED)
        if todo:
            rmp.store(index, index + n, RMP_4K)
            self.metrics.add("rmpupdate_4k", todo)
        return True

    def rmp_2m_entries(self, inode: VendorInode, start: int, end: int) -> int:
        """2 MiB pieces of file indices ``[start, end)`` whose RMP entry is 2M: a 2M PVALIDATE succeeds on
        them, on a 4K entry it fails with PVALIDATE_FAIL_SIZEMISMATCH (``pvalidate_pages``)."""
        total = 0
        for s, e, v in self.table(inode).runs(start, end):
            lo, hi = PMD.align_up(s), PMD.align_down(e)
            if v == RMP_2M and hi > lo:
                total += (hi - lo) // PMD.pages
        return total

    def private_run_4k(self, inode: VendorInode, gfn: int, index: int, n: int) -> None:
        rmp = self.table(inode)
        if rmp.any_match(index, index + n, lambda v: v == RMP_2M):
            self.psmash(inode, gfn, index)
        todo = rmp.count(index, index + n, lambda v: v == RMP_SHARED)
        if todo:
            rmp.store(index, index + n, RMP_4K)
            self.metrics.add("rmpupdate_4k", todo)

    def gmem_invalidate(self, inode: VendorInode, start: int, end: int, gfn_ranges: GfnRanges) -> None:
        rmp = self.rmp.get(inode.ino)
        if rmp is None:
            return
        for s, e, v in list(rmp.runs(start, end)):
            if v == RMP_4K:
                self.metrics.add("rmpupdate_4k", e - s)
            elif v == RMP_2M:
                self._return_2m_entries(rmp, s, e)
        rmp.store(start, end, RMP_SHARED)

    def _return_2m_entries(self, rmp: RangeMap[int], s: int, e: int) -> None:
        """``sev_gmem_invalidate`` over 2M entries ``[s, e)``: whole entries with one RMPUPDATE, partly
        covered ones PSMASHed first (their outside part stays assigned at 4K)."""
        lo, hi = PMD.align_down(s), PMD.align_up(e)
        whole = max(0, (PMD.align_down(e) - PMD.align_up(s)) // PMD.pages)
        cut = {PMD.number(lo)} if lo < s else set()  # the 2M entries the range covers only in part
        if hi > e:
            cut.add(PMD.number(hi - 1))
        partial = len(cut)
        if partial:
            self.metrics.add("psmash", partial)
            if lo < s:
                rmp.store(lo, s, RMP_4K)
            if hi > e:
                rmp.store(e, hi, RMP_4K)
        self.metrics.add("rmpupdate_2m", whole)
        self.metrics.add("rmpupdate_4k", (e - s) - whole * PMD.pages)


class Tdx(NoVendor):
    """Intel TDX private leaves (linux-7.md §2, workloads.md §1.3).

    Upstream maps TD private memory at 4K only. With Yan Zhao's huge-page series v3
    (``HostConfig.tdx_huge_private``; ``kvm_intel.tdx_huge_page``): leaves are 4K while the TD is built
    (TDH.MEM.PAGE.ADD), at most 2M at runtime and follow the guest's ACCEPT level (the fault's max level);
    a 4K ACCEPT, or any 4K private leaf, sets the one-way GUEST_INHIBIT bit of its 2M range
    (``lpage_info.disallow_lpage``), so the range is never mapped 2M again (no promotion); a 2M leaf is split
    (BLOCK + TRACK + DEMOTE, ``tdx_demote``) on a private-to-shared conversion or punch that covers part of
    it and on an accept-level mismatch (:meth:`guest_accept_4k`).
    """

    name = "tdx"

    def __init__(self, stage2: Stage2, metrics: Metrics, config: HostConfig) -> None:
        super().__init__(stage2, metrics, config)
        self.max_level = Level.PG_2M if config.tdx_huge_private else Level.PG_4K
        self.inhibit: RangeMap[bool] = RangeMap(PMD.number(GFN_LIMIT), False)  # GUEST_INHIBIT per 2M gfn range

    def private_level(self, inode: VendorInode, gfn: int, index: int, level: Level, folio_level: Level) -> Level:
        level = min(level, self.max_level)
        if level == Level.PG_2M and self.inhibit.load(PMD.number(gfn)):
            level = Level.PG_4K
        if level == Level.PG_4K:
            self._guest_inhibit(gfn, gfn + 1)
        return level

    def private_run_4k(self, inode: VendorInode, gfn: int, index: int, n: int) -> None:
        self._guest_inhibit(gfn, gfn + n)

    def private_max_level(self) -> Level:
        return self.max_level

    def post_populate(self, inode: VendorInode, gfn: int, index: int, n: int) -> None:
        # tdx_gmem_post_populate: TDH.MEM.PAGE.ADD maps each page at 4K while the TD is built (v3)
        self.stage2.map(gfn, n, True, Level.PG_4K, faults=0)
        self._guest_inhibit(gfn, gfn + n)

    def private_run(self, inode: VendorInode, gfn: int, index: int, n: int, level: Level) -> bool:
        if level == Level.PG_2M:
            return self.max_level >= Level.PG_2M and not self.inhibit.any_match(
                PMD.number(gfn), PMD.number(gfn + n), bool)
        self._guest_inhibit(gfn, gfn + n)
        return True

    def _guest_inhibit(self, start: int, end: int) -> None:
        """4K private leaves in the 2M ranges of gfns ``[start, end)``: GUEST_INHIBIT, set once, never cleared
        (only meaningful where 2M leaves exist at all)."""
        if self.max_level < Level.PG_2M:
            return
        lo, hi = PMD.number(start), PMD.number(PMD.align_up(end))
        todo = self.inhibit.count(lo, hi, lambda v: not v)
        if todo:
            self.inhibit.store(lo, hi, True)
            self.metrics.add("tdx_guest_inhibit", todo)

    def _demote(self, start: int, end: int) -> None:
        """Split the 2M private leaves over gfns ``[start, end)`` to 4K (TDH.MEM.PAGE.DEMOTE)."""
        for s, e, spte in list(self.stage2.sptes.runs(start, end)):
            if spte is not None and spte.private and spte.level == Level.PG_2M:
                lo, hi = PMD.align_down(s), PMD.align_up(e)
                self.stage2.map(lo, hi - lo, True, Level.PG_4K, faults=0)
                self.metrics.add("tdx_demote", PMD.number(hi - lo))
                self._guest_inhibit(lo, hi)

    def guest_accept_4k(self, start: int, end: int) -> None:
        """The guest accepts gfns ``[start, end)`` at 4K: a 2M leaf there is an accept-level mismatch, which
        KVM resolves by demoting it (v3); the 2M range is inhibited either way."""
        self._demote(start, end)
        self._guest_inhibit(start, end)

    def before_zap(self, start: int, end: int) -> None:
        # A conversion or punch covering part of a 2M leaf demotes it first (split before the zap, v3): the
        # zap then takes only the covered 4K leaves, the rest stay mapped at 4K, never promoted.
        for edge in (start, end):
            if PMD.align_down(edge) != edge:
                self._demote(edge, edge + 1)


def vendor_for(vm_type: VmType, stage2: Stage2, metrics: Metrics, config: HostConfig) -> NoVendor:
    """The vendor object for a VM type (SNP -> RMP, TDX -> TDX, anything else -> none)."""
    if vm_type == VmType.SNP:
        return SnpRmp(stage2, metrics, config)
    if vm_type == VmType.TDX:
        return Tdx(stage2, metrics, config)
    return NoVendor(stage2, metrics, config)
