"""The recorded kernels as an oracle (issue 15 item 5): every row of realkernel-private.md reproduced.

:func:`reproduce` runs the recording probe's sections (:mod:`.sections`) on a backend configured as one of
the recorded kernels (:mod:`.columns`: A = 6.18.2 with SW_PROTECTED and per-VM attributes, B = 7.1.5 with
in-place v8, B0 = B with the parameter off, Bv = B with per-VM attributes) and returns the cells it rendered,
keyed by row id. :func:`compare` joins them with the recording (:mod:`.recording`): a row is reproduced when
every column that ran it shows the recorded cell, or it is listed here, out of the model's scope or pending,
with the reason. The backends come from the caller (a factory): the model configured from a column's host
facts (``gmemlab.cli.oracle.model_factory``), or a kernel (``gmemlab oracle --backend kernel``), where the
kernel's own column is the one to compare with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .columns import COLUMNS, Column
from .probe import Probe
from .recording import NOT_RUN, normalise
from .sections import SECTIONS, section0

_TIMING = ("wall time under nested TCG (QEMU emulating SVM): the model has no clock, and the recording itself "
           "says these say nothing about hardware; time is the simulator's cost model's business")

OUT_OF_SCOPE: dict[str, str] = {
    "0/cmdline": "the kernel command line the probe booted: column B0's input (its HostConfig has "
                 "gmem_in_place_conversion=False), not an observation",
    **{row: _TIMING for row in ("0/elapsed/1", "0/elapsed/2", "0/elapsed/3", "0/elapsed/4", "0/elapsed/5",
                                "0/elapsed/6", "0/elapsed", "3/elapsed/args", "3/elapsed/host", "3/elapsed/pins",
                                "3/elapsed/unalloc_punch", "3/elapsed/fork", "3/timing/roundtrip_4k")},
    "6/thp_enabled": "the host's THP mode (/sys/kernel/mm/transparent_hugepage/enabled) is a host setting the "
                     "model does not answer; what it could change is covered by 6/*/madv_collapse",
    "6/default_vm/smaps": "/proc/PID/smaps text, which the model does not produce (it also shows the probe's "
                          "own alignment reservation); its finding, no PMD mapping of guest_memfd after "
                          "MADV_COLLAPSE, is the model's rule (order-0 folios, MADV_COLLAPSE EINVAL: "
                          "6/*/madv_collapse)",
    "6/swp_vm/smaps": "as 6/default_vm/smaps",
}

# Rows that wait for interface work (none now: KVM_PRE_FAULT_MEMORY and instruction fetch landed with qemu2).
PENDING: dict[str, str] = {}


_V8 = "the recorded kernel is the series' v8 on 7.1.5; linux-7.4 follows v13 (linux-7.4-v8 reproduces it: {})"
_GMEM_ONLY = _V8.format("GMEM_ONLY only with MMAP, realkernel-private.md finding 5; v13 makes every gmem slot "
                        "GMEM_ONLY when conversion is on, so the guest reads gmem, and after the close a memory "
                        "fault")
_EEXIST = _V8.format("its 7.1.5 base has no 7.2 binding change: a file-range overlap is EINVAL, not EEXIST")

# Rows of the in-place kernels that the linux-7.4 (v13) profile answers differently, and why. The linux-7.4-v8
# variant reproduces every one of them; tests/linux7/test_oracle.py checks this list is exact.
V13_DIFFERS: dict[tuple[str, str], str] = {
    **{("B", row): _GMEM_ONLY for row in ("4d/flags0", "4d/init_shared_no_mmap", "4e/after_close_mapped",
                                          "4e/after_close_unmapped")},
    **{(col, row): _EEXIST for col in ("B", "B0", "Bv")
       for row in ("5/bind/overlap_same_range", "5/bind/overlap_partial", "5/bind/overlap_last_page",
                   "5/bind/as1_gmem_default_vm", "6/default_vm/overlap_binding")},
    ("B", "6/swp_vm/overlap_binding"): _EEXIST,
}


def reproduce(column: Column, factory: Callable[[], Any], base: int = 0,
              sections: tuple[str, ...] | None = None) -> dict[str, str]:
    """Every cell the probe's sections render on fresh backends from ``factory`` (one per section)."""
    cells: dict[str, str] = {}
    todo: list[tuple[str, Callable[[Probe], None]]] = [("0", lambda p: section0(p, column.release)), *SECTIONS]
    for name, run in todo:
        if sections is not None and name not in sections:
            continue
        system = factory()
        try:
            probe = Probe(system, base)
            run(probe)
            cells.update(probe.cells)
        finally:
            system.close()
    return cells


@dataclass(frozen=True)
class Verdict:
    """One (row, column) of the recording: ``reproduced``, ``differs``, ``missing`` (the model produced
    nothing), ``extra`` (a row the kernel did not run was produced), ``out of scope`` or ``pending``."""

    row: str
    column: str
    status: str
    recorded: str
    produced: str | None
    reason: str = ""


def compare(recorded: dict[str, dict[str, str]], produced: dict[str, dict[str, str]]) -> list[Verdict]:
    """Join the recording with the cells produced per column (``produced[column][row]``)."""
    out = []
    for row, cells in recorded.items():
        for column, cell in cells.items():
            if column not in produced:
                continue
            want = normalise(cell)
            got = produced[column].get(row)
            if row in OUT_OF_SCOPE:
                out.append(Verdict(row, column, "out of scope", want, got, OUT_OF_SCOPE[row]))
            elif row in PENDING:
                out.append(Verdict(row, column, "pending", want, got, PENDING[row]))
            elif want == NOT_RUN:
                out.append(Verdict(row, column, "reproduced" if got is None else "extra", want, got))
            elif got is None:
                out.append(Verdict(row, column, "missing", want, got))
            else:
                out.append(Verdict(row, column, "reproduced" if got == want else "differs", want, got))
    return out


def column_of(profile: str, mode: str) -> str | None:
    """Which recorded kernel a backend is, from its profile and attribute mode (None: none of them)."""
    if profile == "linux-6.18" and mode == "vmattrs":
        return "A"
    if profile == "linux-7.4-v8":
        return {"inplace": "B", "none": "B0", "vmattrs": "Bv"}[mode]
    return None


__all__ = ["COLUMNS", "OUT_OF_SCOPE", "PENDING", "V13_DIFFERS", "Column", "Verdict", "column_of", "compare",
           "reproduce"]
