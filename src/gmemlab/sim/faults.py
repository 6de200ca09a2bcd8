"""Guest faults in batches, and the vendor decisions that follow them (workloads.md §1.2, §1.3, §2.1).

The generators say what the guest touches (:class:`~gmemlab.workload.events.GuestFault`) and what it
validates or accepts (:class:`~gmemlab.workload.events.Pvalidate`, :class:`~gmemlab.workload.events.Accept`);
what that costs depends on the model's state at run time:

* **PVALIDATE at 2M** (rows 23/24): after the validated range is faulted in, each 2 MiB piece whose SNP RMP
  entry is 2M counts one ``pvalidate_2m``; a piece whose RMP entry is 4K counts one
  ``pvalidate_2m_fallback`` (1 failed + 512 x 4K). 4K PVALIDATEs count per page.
* **TDX ACCEPT** (§1.3, ``tdx_accept_memory``; linux-7.md §2): each call tries the guest's levels largest
  first over its aligned pieces. The 2M-aligned middle faults with ``fault->max_level`` 2M: 2M S-EPT leaves
  (Yan Zhao's v3) give ``tdx_accept_2m`` per 2 MiB; 4K leaves (upstream) a failed 2M try
  (``tdx_accept_2m_mismatch``, inside row 16's estimate) and ``tdx_accept_4k`` per page. The unaligned head
  and tail are accepted at 4K: the fault's max level is 4K, the 2M range gets GUEST_INHIBIT, and a 2M leaf
  already there is demoted (the accept-level mismatch). Lazy, eager and firmware accepts alike (row 16).
* **Fault pricing**: faults the guest takes inside a PVALIDATE or an ACCEPT are priced by rows 23 and 16
  (their estimates include the fault), counted as ``faults_in_*``; plain first touches by rows 14/15, or
  by row 32 (donation) on pKVM.

:class:`FaultBatch` coalesces consecutive touches and PVALIDATEs over adjacent ranges into one range fault,
flushed before any event that changes or reads model state. The level of a fault depends on the gfn and
the state, never on the fault's extent, so this gives the same model state as faulting event by event
(the tests check it against the per-page reference run). ACCEPT calls fault one by one: their pieces'
levels depend on where each call starts and ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..level import LEVELS, Level
from ..model.metrics import per_level
from ..uapi import PAGE_SHIFT, PAGE_SIZE
from .machine import Machine

PMD = Level.PG_2M


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

    def __init__(self, machine: Machine, counters: Counter[str], pkvm: bool, coalesce: bool = True) -> None:
        self.machine = machine
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

    def _faults(self) -> list[int]:
        m = self.machine.metrics
        return [m[per_level("stage2_faults", lv)] for lv in LEVELS]

    def flush(self) -> bool:
        """Apply what is pending; False when nothing was."""
        pending, self.pending = self.pending, None
        if pending is None:
            return False
        before = self._faults()
        if pending.kind == "accept":
            for start, end, levels in pending.claims:
                self._accept(start, end, levels)
        else:
            for start, end in pending.ranges:
                self.machine.fault_range(start, end)
        faults = {lv: n - b for lv, n, b in zip(LEVELS, self._faults(), before, strict=True)}
        c = self.counters
        if pending.kind == "touch":
            if self.pkvm:
                c["pkvm_donate_4k"] += faults[Level.PG_4K]
                c["pkvm_donate_2m"] += faults[Level.PG_2M] + faults[Level.PG_1G]
            else:
                for lv in LEVELS:
                    c[f"s2_map_{lv.key}"] += faults[lv]
            return True
        for lv in LEVELS:
            c[f"faults_in_{pending.kind}_{lv.key}"] += faults[lv]
        if pending.kind == "pvalidate":
            for start, end, size in pending.claims:
                self.settle_pvalidate(start << PAGE_SHIFT, end << PAGE_SHIFT, size)
        return True

    def settle_pvalidate(self, start: int, end: int, page_size: int) -> None:
        """Rows 23/24: 2M PVALIDATEs succeed where the RMP entry is 2M, else fall back to 512 x 4K."""
        c = self.counters
        if page_size < PMD.bytes:
            c["pvalidate_4k"] += (end - start) // PAGE_SIZE
            return
        pieces = (end - start) // PMD.bytes
        good = self.machine.rmp_2m_pieces(start, end)
        c["pvalidate_2m"] += good
        c["pvalidate_2m_fallback"] += pieces - good
        c["pvalidate_4k"] += ((end - start) % PMD.bytes) // PAGE_SIZE

    def _accept(self, start: int, end: int, try_levels: tuple[Level, ...]) -> None:
        """One ``tdx_accept_memory`` call over gfns ``[start, end)`` (see the module docstring)."""
        c = self.counters
        t = self.machine
        lo, hi = (PMD.align_up(start), PMD.align_down(end)) if PMD in try_levels else (end, end)
        if hi <= lo:
            lo = hi = end
        for a, b in ((start, lo), (hi, end)):  # 4K pieces: GUEST_INHIBIT, mismatch demotes a 2M leaf
            if a < b:
                t.accept_4k(a << PAGE_SHIFT, b << PAGE_SHIFT)
                t.fault_range(a, b, max_level=Level.PG_4K)
        if lo < hi:
            t.fault_range(lo, hi, max_level=PMD)
        for s, e, level in t.leaf_runs(start << PAGE_SHIFT, end << PAGE_SHIFT):
            if level is None:
                continue  # the fault failed: nothing to accept
            mid_s, mid_e = max(s, lo), min(e, hi)
            whole_2m = max(PMD.align_down(mid_e) - PMD.align_up(mid_s), 0) // PMD.pages
            if level >= Level.PG_2M:
                c["tdx_accept_2m"] += whole_2m
                c["tdx_accept_4k"] += (e - s) - whole_2m * PMD.pages
            else:
                c["tdx_accept_2m_mismatch"] += whole_2m
                c["tdx_accept_4k"] += e - s
