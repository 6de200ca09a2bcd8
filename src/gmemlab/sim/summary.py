"""Derived counts of a validated scenario, worked like workloads.md §6 (shown by ``scenarios describe``).

Arithmetic only, before any event is generated: sizes from the rules, acceptance amounts, per-region
protocol counts. Where the answer depends on placement (an SNP region's 2M alignment) both cases are given,
as §6 does; exact counts come from the generated stream (``gmemlab scenarios events``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..level import LEVELS, Level
from ..uapi import PAGE_SIZE
from ..workload.derived import PSC_MAX_ENTRIES, TDX_MR_EXTEND_PER_PAGE, ceil_div, memblock_top_block, snp_psc_counts
from ..workload.scenario import Scenario, SharedRegion
from ..workload.units import format_size
from .costs import CostTable

PMD_SIZE = Level.PG_2M.bytes


@dataclass(frozen=True)
class DerivedCount:
    """One row of ``scenarios describe``'s derived counts: what, how many, worked out how."""

    quantity: str
    value: str
    derivation: str


def _n(value: int) -> str:
    return f"{value:,}"


def derived_counts(sc: Scenario, costs: CostTable | None = None) -> list[DerivedCount]:
    costs = costs or CostTable()
    mem = sc.guest_mem
    out = [DerivedCount("4K / 2M / 1G pages", " / ".join(_n(mem // lv.bytes) for lv in LEVELS),
                 "guest_mem / size")]
    if sc.set_attr_private:
        if sc.attr_store == "xarray":
            pages = mem // PAGE_SIZE
            secs = pages * costs.cost("12", sc.vcpus) / 1e6
            out.append(DerivedCount("SET_ATTR(all, private)", f"{_n(pages)} xarray stores, ~{secs:.3g} s",
                             "one entry per 4K page x row 12"))
        else:
            out.append(DerivedCount("SET_ATTR(all, private)", "1 maple range store", "row 13"))
    payload = sum(r.size for r in sc.populate.ranges) // PAGE_SIZE
    if payload:
        text = f"{_n(payload)} x 4K"
        if sc.arch == "tdx":
            measured = sum(r.size for r in sc.populate.ranges if r.measure) // PAGE_SIZE
            text += f", {_n(measured * TDX_MR_EXTEND_PER_PAGE)} MR.EXTEND"
        out.append(DerivedCount(f"payload ({sc.populate.method})", text, "populate.ranges / 4K"))
    exits = [0, 0]  # lowest and highest expected userspace exits
    plan = sc.accept_plan()
    if plan.total:
        out.append(DerivedCount("accepted by the firmware", format_size(plan.firmware),
                         "all RAM below 4 GiB (q35 low RAM)" if sc.accept.firmware == "below_4g" else "all RAM"))
        top = memblock_top_block(sc.guest_mem, sc.vcpus, sc.arch == "snp")
        out.append(DerivedCount("memblock top block (setup_arch)", format_size(top),
                         "memmap RAM/64 + per-CPU areas + hash tables (+ GHCB data), accepted out of order"))
        if sc.accept.mode == "lazy":
            out.append(DerivedCount("before the watermarks / rest of boot", f"{format_size(plan.storm)} / "
                             f"{format_size(plan.boot)}", "pre_watermark fixed + per_vcpu x vCPUs; "
                             "used_at_boot + wmark_promo"))
        out.append(DerivedCount("lazy 4 MiB steps (total, about)", _n(plan.chunks_total),
                         f"(accepted eventually - firmware) / {format_size(plan.chunk)}"))
        out.extend(_accept_counts(sc, plan.chunks_total, plan.chunk, costs, exits))
    for region in sc.shared_regions:
        out.extend(_region_counts(sc, region, exits))
    churn = int(sc.runtime_churn.rate_per_s * sc.runtime_s)
    if churn:
        per = {"snp": 2, "tdx": 2}.get(sc.arch, 0)  # to shared and back, each buffer < one 2 MiB exit
        exits[0] += churn * per
        exits[1] += churn * per * (2 if sc.arch == "tdx" else 1)  # a TDX buffer may straddle a 2 MiB chunk
        out.append(DerivedCount("runtime conversions", f"{_n(churn)} x (to shared + to private)",
                         "runtime_churn.rate_per_s x runtime_s"))
    return out


def _accept_counts(sc: Scenario, chunks: int, chunk: int, costs: CostTable, exits: list[int]) -> list[DerivedCount]:
    if sc.arch == "snp":
        use_2m = sc.accept.psc_entry_size >= PMD_SIZE
        entries = chunk // PMD_SIZE if use_2m else chunk // PAGE_SIZE
        vmgexits = ceil_div(entries, PSC_MAX_ENTRIES)
        pval = sc.accept.pvalidate_size if use_2m else PAGE_SIZE
        exits[0] += chunks * vmgexits
        exits[1] += chunks * vmgexits
        return [
            DerivedCount("SNP accept: PSC VMGEXITs / userspace exits",
                         f"{_n(chunks * vmgexits)} / {_n(chunks * vmgexits)}",
                         f"{vmgexits} descriptor(s) of {entries} entries per chunk, 1 merged exit each"),
            DerivedCount("SNP accept: PVALIDATE", f"{_n(chunks * chunk // pval)} at {format_size(pval)} "
                  f"(or {_n(chunks * chunk // PAGE_SIZE)} if the RMP is 4K)", "per chunk: chunk / size"),
        ]
    if sc.arch == "tdx":
        pages = chunks * chunk // PAGE_SIZE
        secs = pages * costs.cost("16", sc.vcpus) / 1e6
        return [DerivedCount("TDX accept: 4K accepts at 4K S-EPT", f"{_n(pages)}, ~{secs:.0f} s of vCPU time",
                      "2M tries fall back to 512 x 4K upstream (§1.3) x row 16")]
    return []


def _region_counts(sc: Scenario, region: SharedRegion, exits: list[int]) -> list[DerivedCount]:
    size, count = sc.region_size(region), sc.region_count(region)
    label = f"{count} x {format_size(size)}" if count > 1 else format_size(size)
    rule = f"rule {region.rule}" if region.size is None else "scenario"
    if not count:
        return [DerivedCount(f"shared region {region.name}", "none", f"rule {region.rule} (count 0 here)")]
    out = [DerivedCount(f"shared region {region.name}", label, rule)]
    if sc.arch == "snp" and region.msr:
        pages = count * size // PAGE_SIZE
        exits[0] += pages
        exits[1] += pages
        out.append(DerivedCount(f"{region.name}: MSR-protocol exits", _n(pages), "1 per 4K page"))
    elif sc.arch == "snp":
        a2m, a4k, avm = snp_psc_counts(size, aligned_2m=True)
        u2m, u4k, uvm = snp_psc_counts(size, aligned_2m=False)
        aligned_exits = avm + (1 if a2m and a4k else 0)
        exits[0] += count * min(aligned_exits, uvm)
        exits[1] += count * (max(aligned_exits, uvm) + 2)  # a descriptor holding both sizes: two exits
        out.append(DerivedCount(f"{region.name}: PSC entries (2M + 4K) -> VMGEXITs",
                         f"aligned {a2m}+{a4k} -> {avm * count}; unaligned <= {u2m}+{u4k} -> {uvm * count}",
                         "64 entries per descriptor; one exit per same-size run"))
    elif sc.arch == "tdx":
        n = count * ceil_div(size, sc.arch_limits.map_gpa_chunk)
        exits[0] += n
        exits[1] += n
        out.append(DerivedCount(f"{region.name}: MapGPA userspace exits", _n(n),
                         f"size / {format_size(sc.arch_limits.map_gpa_chunk)}"
                         + ("" if region.ram else " (not RAM: VMM ignores)")))
    elif sc.arch == "pkvm":
        what = "MEM_SHARE" if region.ram else "MMIO_GUARD_MAP"
        out.append(DerivedCount(f"{region.name}: {what} hypercalls", _n(count * size // region.granule),
                                "size / granule"))
    return out
