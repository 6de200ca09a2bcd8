"""Guest faults in batches, and the vendor decisions that follow them (workloads.md §1.2, §1.3, §2.1).

The generators say what the guest touches (:class:`~gmemlab.workload.events.GuestFault`) and what it
validates or accepts (:class:`~gmemlab.workload.events.Pvalidate`, :class:`~gmemlab.workload.events.Accept`);
what that costs depends on the model's state at run time:

* **PVALIDATE at 2M** (rows 23/24): after the validated range is faulted in, each 2 MiB piece whose SNP RMP
  entry is 2M counts one ``pvalidate_2m``; a piece whose RMP entry is 4K counts one
  ``pvalidate_2m_fallback`` (1 failed + 512 x 4K). 4K PVALIDATEs count per page.
* **TDX ACCEPT level** (§1.3): the accepted range is faulted in (EPT violation, TDH.MEM.PAGE.AUG); each
  piece is then accepted at the largest of the guest's try levels the S-EPT leaf allows: 2M leaves (Yan
  Zhao's RFC) give ``tdx_accept_2m`` per 2 MiB, 4K leaves (upstream) ``tdx_accept_4k`` per page (lazy,
  eager and firmware accepts alike: the same TDCALL and EPT-violation path, row 16); a failed 2M try on a
  4K leaf counts ``tdx_accept_2m_mismatch`` (unpriced: its cost is inside row 16's estimate).
* **Fault pricing**: faults the guest takes inside a PVALIDATE or an ACCEPT are priced by rows 23 and 16
  (their estimates include the fault), counted as ``faults_in_*``; plain first touches by rows 14/15, or
  by row 32 (donation) on pKVM.

:class:`FaultBatch` coalesces consecutive fault events of one kind over adjacent ranges into one range
fault, flushed before any event that changes or reads model state. The level of a fault depends on the
gfn and the state, never on the fault's extent, so this gives the same model state as faulting event by
event (the tests check it against the per-page reference run).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..uapi import PAGE_SHIFT, PAGE_SIZE
from .target import PMD_PAGES, Target

LEVELS = ("4K", "2M", "1G")


@dataclass
class _Pending:
    """Coalesced faults of one kind: gfn ranges to fault and the claims to settle afterwards."""

    kind: str
    ranges: list[list[int]] = field(default_factory=list)
    claims: list[list[Any]] = field(default_factory=list)

    def add(self, start: int, end: int, claim: Any = None) -> None:
        if self.ranges and self.ranges[-1][1] == start:
            self.ranges[-1][1] = end
        else:
            self.ranges.append([start, end])
        if claim is not None:  # one claim per event: an ACCEPT call's 2M pieces do not span two calls
            self.claims.append([start, end, claim])


class FaultBatch:
    """Pending guest faults of one kind (``touch``, ``pvalidate``, ``accept``), applied on :meth:`flush`."""

    def __init__(self, target: Target, counters: Counter[str], pkvm: bool, coalesce: bool = True) -> None:
        self.target = target
        self.counters = counters
        self.pkvm = pkvm
        self.coalesce = coalesce
        self.pending: _Pending | None = None

    def add(self, kind: str, start: int, end: int, claim: Any = None) -> None:
        """Queue a fault of GPA ``[start, end)``; a different kind flushes first."""
        pending = self.pending
        if pending is not None and pending.kind != kind:
            self.flush()
            pending = None
        if pending is None:
            pending = self.pending = _Pending(kind)
        pending.add(start >> PAGE_SHIFT, end >> PAGE_SHIFT, claim)
        if not self.coalesce:
            self.flush()

    def flush(self) -> bool:
        """Apply what is pending; False when nothing was."""
        pending, self.pending = self.pending, None
        if pending is None:
            return False
        m = self.target.metrics
        before = [m[f"stage2_faults.{lv}"] for lv in LEVELS]
        for start, end in pending.ranges:
            self.target.fault_range(start, end)
        faults = {lv: m[f"stage2_faults.{lv}"] - b for lv, b in zip(LEVELS, before, strict=True)}
        c = self.counters
        if pending.kind == "touch":
            if self.pkvm:
                c["pkvm_donate_4k"] += faults["4K"]
                c["pkvm_donate_2m"] += faults["2M"] + faults["1G"]
            else:
                for lv in LEVELS:
                    c[f"s2_map_{lv.lower()}"] += faults[lv]
            return True
        for lv in LEVELS:
            c[f"faults_in_{pending.kind}_{lv.lower()}"] += faults[lv]
        for start, end, claim in pending.claims:
            if pending.kind == "pvalidate":
                self.settle_pvalidate(start << PAGE_SHIFT, end << PAGE_SHIFT, claim)
            else:
                self.settle_accept(start << PAGE_SHIFT, end << PAGE_SHIFT, claim)
        return True

    def settle_pvalidate(self, start: int, end: int, page_size: int) -> None:
        """Rows 23/24: 2M PVALIDATEs succeed where the RMP entry is 2M, else fall back to 512 x 4K."""
        c = self.counters
        if page_size < PMD_PAGES * PAGE_SIZE:
            c["pvalidate_4k"] += (end - start) // PAGE_SIZE
            return
        pieces = (end - start) // (PMD_PAGES * PAGE_SIZE)
        good = self.target.rmp_2m_pieces(start, end)
        c["pvalidate_2m"] += good
        c["pvalidate_2m_fallback"] += pieces - good
        c["pvalidate_4k"] += ((end - start) % (PMD_PAGES * PAGE_SIZE)) // PAGE_SIZE

    def settle_accept(self, start: int, end: int, try_levels: tuple[int, ...]) -> None:
        """§1.3: each piece is accepted at the largest try level its S-EPT leaf allows."""
        c = self.counters
        small = "tdx_accept_4k"
        try_2m = PMD_PAGES * PAGE_SIZE in try_levels
        for s, e, level in self.target.leaf_runs(start, end):
            if level == 0:
                continue  # the fault failed: nothing to accept
            lo, hi = s + (-s) % PMD_PAGES, e - e % PMD_PAGES
            whole_2m = max(hi - lo, 0) // PMD_PAGES
            if level >= 2 and try_2m:
                c["tdx_accept_2m"] += whole_2m
                c[small] += (e - s) - whole_2m * PMD_PAGES
            else:
                if try_2m:
                    c["tdx_accept_2m_mismatch"] += whole_2m
                c[small] += e - s
