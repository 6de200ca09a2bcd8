"""What a run counted, and those counts under the cost table's names (workloads.md §4).

:func:`raw` reads every counter once: the model's metrics (``m.<key>``), the engine's own counts (exits,
PSC VMGEXITs, PVALIDATEs, hypercalls...) and a few page-cache statistics. Counters only grow, so the
difference of two readings is what happened in between; :func:`price` turns such a difference into the
counters the rows of :mod:`gmemlab.sim.costs` price. Being linear, it can be applied to any slice of a run
(the engine applies it per segment and lane, :mod:`gmemlab.sim.timing`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..uapi import PAGE_SHIFT

if TYPE_CHECKING:
    from .target import Target


@dataclass(frozen=True)
class PriceContext:
    """Facts fixed for a run that decide which row a model counter goes to."""

    staged: bool  # the policy splits 1G -> 2M first (row 9) rather than 1G -> 4K (row 6)
    tdx_huge: bool  # TDX private 2M leaves possible: a 4K range under them is a DEMOTE (row 18)
    no_direct_map: bool  # GUEST_MEMFD_FLAG_NO_DIRECT_MAP: every prepared folio leaves the direct map (row 33)
    huge_block_pages: int  # pages per HugeTLB folio, 0 for order-0 files


def raw(target: Target, engine: Counter[str]) -> Counter[str]:
    """Every counter of the run so far, flat (monotonic)."""
    out: Counter[str] = Counter(engine)
    for key, value in target.metrics.items():
        out["m." + key] = value
    stats = target.pagecache_stats()
    out["pc.folios_allocated"] = stats.get("folios_allocated", 0)
    out["pc.pages_zeroed"] = stats.get("pages_zeroed", 0)
    out["fault_errors"] = target.fault_errors
    return out


def price(delta: Counter[str], ctx: PriceContext) -> Counter[str]:
    """The counters of ``delta`` (a difference of :func:`raw` readings) under the cost rows' names."""
    out: Counter[str] = Counter({k: v for k, v in delta.items() if "." not in k and k != "fault_errors"})
    m = {k[2:]: v for k, v in delta.items() if k.startswith("m.")}
    out["split_1g_2m" if ctx.staged else "split_1g_4k"] += m.get("splits.1G", 0)
    out["split_2m_4k"] += m.get("splits.2M", 0)
    out["merge_2m_1g" if ctx.staged else "merge_4k_1g"] += m.get("merges.1G", 0)
    out["merge_4k_2m"] += m.get("merges.2M", 0)
    for name in ("rmpupdate_4k", "rmpupdate_2m", "psmash"):
        out[name] += m.get(f"arch.{name}", 0)
    # RMPUPDATEs done by SNP_LAUNCH_UPDATE are priced by row 20, which includes them.
    out["rmpupdate_4k"] -= out.pop("rmpupdate_4k_in_populate", 0)
    # The model marks every 2 MiB range that gets 4K private leaves; only with 2M S-EPT leaves possible
    # (the RFC) is that a DEMOTE (row 18). Upstream 4K-only TDX never demotes.
    demotes = m.get("arch.tdx_demote", 0) - out.pop("tdx_demote_in_populate", 0)  # TD build: PAGE.ADD at 4K
    out["tdx_demote" if ctx.tdx_huge else "tdx_4k_ranges"] += demotes
    out["s2_zap_leaf"] += m.get("leaves_zapped", 0)
    out["tlb_flush_remote"] += m.get("tlb_flushes", 0)
    if ctx.huge_block_pages:
        out["zero_4k"] += m.get("bytes_zeroed", 0) >> PAGE_SHIFT
        out["folio_alloc_huge"] += delta.get("pc.folios_allocated", 0) // ctx.huge_block_pages
    else:
        out["zero_4k"] += delta.get("pc.pages_zeroed", 0)
        out["folio_alloc_4k"] += delta.get("pc.folios_allocated", 0)
    if ctx.no_direct_map:
        out["direct_map_remove"] += m.get("arch_prepares", 0)
    out["conversion_eagain"] += m.get("conversions.eagain", 0)
    out["guest_fault_errors"] += delta.get("fault_errors", 0)
    return Counter({k: v for k, v in out.items() if v})
