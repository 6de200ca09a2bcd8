"""What a run counted, and those counts under the cost table's names (workloads.md §4).

:func:`raw` reads every counter once: the model's metrics sink (``m.<key>``: its keys are already the cost
model's counters where a row prices what the model counts, :mod:`gmemlab.model.metrics`), the engine's own
counts (exits, PSC VMGEXITs, PVALIDATEs, hypercalls...) and the page cache's statistics. Counters only
grow, so the difference of two readings is what happened in between; :func:`price` turns such a difference
into the counters the rows of :mod:`gmemlab.sim.costs` price, nearly all by name. Being linear, it can be
applied to any slice of a run (the engine applies it per segment and lane, :mod:`gmemlab.sim.timing`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..level import Level

if TYPE_CHECKING:
    from .machine import Machine

# Model counters a cost row prices as they are (same name in the sink and in the cost table).
PRICED_AS_IS = (
    "split_1g_4k", "split_1g_2m", "split_2m_4k", "merge_4k_1g", "merge_2m_1g", "merge_4k_2m",
    "rmpupdate_4k", "rmpupdate_2m", "psmash", "tdx_demote", "s2_zap_leaf", "tlb_flush_remote",
    "conversion_eagain", "zero_2m", "zero_1g",
)


@dataclass(frozen=True)
class PriceContext:
    """Facts fixed for a run that decide which row a model counter goes to."""

    no_direct_map: bool  # GUEST_MEMFD_FLAG_NO_DIRECT_MAP: every prepared folio leaves the direct map (row 33)
    huge_block_pages: int  # pages per HugeTLB folio, 0 for order-0 files


def raw(machine: Machine, engine: Counter[str]) -> Counter[str]:
    """Every counter of the run so far, flat (monotonic)."""
    out: Counter[str] = Counter(engine)
    for key, value in machine.metrics.items():
        out["m." + key] = value
    stats = machine.pagecache_stats()
    out["pc.folios_allocated"] = stats.get("folios_allocated", 0)
    out["pc.pages_zeroed"] = stats.get("pages_zeroed", 0)
    out["fault_errors"] = machine.fault_errors
    return out


def price(delta: Counter[str], ctx: PriceContext) -> Counter[str]:
    """The counters of ``delta`` (a difference of :func:`raw` readings) under the cost rows' names."""
    out: Counter[str] = Counter({k: v for k, v in delta.items() if "." not in k and k != "fault_errors"})
    m = {k[2:]: v for k, v in delta.items() if k.startswith("m.")}
    for name in PRICED_AS_IS:
        out[name] += m.get(name, 0)
    # RMPUPDATEs done by SNP_LAUNCH_UPDATE are priced by row 20, which includes them.
    out["rmpupdate_4k"] -= out.pop("rmpupdate_4k_in_populate", 0)
    out["tdx_guest_inhibit"] += m.get("tdx_guest_inhibit", 0)  # reported: no work of its own
    if ctx.huge_block_pages:
        whole = m.get("zero_2m", 0) * Level.PG_2M.bytes + m.get("zero_1g", 0) * Level.PG_1G.bytes
        out["zero_4k"] += (m.get("bytes_zeroed", 0) - whole) // Level.PG_4K.bytes
        out["folio_alloc_huge"] += delta.get("pc.folios_allocated", 0) // ctx.huge_block_pages
    else:
        out["zero_4k"] += delta.get("pc.pages_zeroed", 0)
        out["folio_alloc_4k"] += delta.get("pc.folios_allocated", 0)
    if ctx.no_direct_map:
        out["direct_map_remove"] += m.get("arch_prepares", 0)
    out["guest_fault_errors"] += delta.get("fault_errors", 0)
    return Counter({k: v for k, v in out.items() if v})
