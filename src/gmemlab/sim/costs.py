"""The cost model of workloads.md §4 as one table of weights, and counters -> modelled time.

Each :class:`CostRow` keeps the row id of §4 (``"6"``, ``"6m"``; §4.1 rows are ``"41-4k"`` etc.; rows this
lab adds carry a letter, e.g. ``"19a"``), the estimate as published, a weight in **W = 1 µs** (the cost of a
4K stage-2 map on a TDP fault, §4), the source tag and its citation, the category it is reported under, and
the counters it prices. The engine's counters (DESIGN.md principle 7) are plain ``{name: count}``;
:meth:`CostTable.modelled_time` multiplies them out. Counters no row prices are reported, never dropped.

Counter contract (what the engine counts, one per event of that kind):

* a PVALIDATE at 2M that meets a 4K RMP entry counts once in ``pvalidate_2m_fallback`` (row 24 prices the
  failed attempt plus the 512 x 4K retries); its 4K retries are *not* also counted in ``pvalidate_4k``;
* ``tdx_mr_extend`` counts SEAMCALLs (16 per measured 4K page), ``*_hvc`` count hypercalls;
* split and merge of the same size share a row (row 8: "same order as the split").

Weights can be overridden from a TOML file (``[rows.<id>]`` tables with ``weight``, ``per_vcpu``, ``tag``,
``basis``), validated like scenario files.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..workload.schema import Choice, Number, TableOf, Text, build, did_you_mean, fail, option

TAGS = ("src", "pub", "derived", "measured", "assumed")
CATEGORIES = (
    "alloc", "zeroing", "split_merge", "conversion", "attr_store", "faults", "accept", "populate",
    "exits", "hypercalls", "tlb", "direct_map",
)
PAGE = 4096


@dataclass(frozen=True)
class CostRow:
    """One row of §4. ``weight`` None: informational (calibration or memory), prices no counter."""

    id: str
    operation: str
    estimate: str
    weight: float | None
    unit: str
    category: str
    tag: str
    basis: str
    counters: tuple[str, ...] = ()
    per_vcpu: float = 0.0

    def cost(self, vcpus: int) -> float:
        """Weight in W (µs) for one counted event with ``vcpus`` vCPUs."""
        return (self.weight or 0.0) + self.per_vcpu * vcpus


def _row(id_: str, operation: str, estimate: str, weight: float | None, unit: str, category: str, tag: str,
         basis: str, *counters: str, per_vcpu: float = 0.0) -> CostRow:
    return CostRow(id_, operation, estimate, weight, unit, category, tag, basis, counters, per_vcpu)


MICHAEL = "Michael Roth <20250712001055.3in2lnjz6zljydq2@amd.com>, 16 GB SNP guest"

DEFAULT_ROWS: tuple[CostRow, ...] = (
    _row("1", "Allocate order-0 folio (buddy)", "~0.2-0.5 µs", 0.3, "per folio", "alloc", "assumed", "",
         "folio_alloc_4k"),
    _row("2", "Allocate HugeTLB folio from the reserved pool (2M or 1G, no zeroing)", "~1-5 µs", 2, "per folio",
         "alloc", "assumed", "list dequeue + accounting; subpool pre-reserved (§3.1)", "folio_alloc_huge"),
    _row("3", "Zero 4 KiB", "0.26 µs", 0.3, "per 4K", "zeroing", "measured",
         "memset per 4K page, warm cache, 2-vCPU cloud VM", "zero_4k"),
    _row("4", "Zero 2 MiB", "~140 µs (~15 GB/s cached stores)", 140, "per 2M", "zeroing", "measured",
         "2-vCPU cloud VM", "zero_2m"),
    _row("5", "Zero 1 GiB", "22 ms (non-temporal) to ~70 ms (cached)", 7e4, "per 1G", "zeroing", "measured",
         "2-vCPU cloud VM; cached-store end taken, consistent with row 4 x 512", "zero_1g"),
    _row("6", "Split or merge 1G<->4K (HugeTLB + HVO restore + 262,144 filemap entries)",
         "46,475,980 cyc (~15 ms)", 1.5e4, "per split or merge", "split_merge", "pub",
         f"{MICHAEL}: 46475980 cycles vs 320 for a normal conversion", "split_1g_4k", "merge_4k_1g"),
    _row("6m", "Extra memory when a 1G folio is split (HVO undone)", "+4,095 pages = 16 MiB vmemmap", None,
         "pages per split 1G", "split_merge", "derived", "262,144 struct pages x 64 B; HVO keeps 1 page"),
    _row("7", "Split or merge 2M<->4K (HugeTLB)", "~1e5 cyc (~37 µs)", 40, "per split or merge", "split_merge",
         "derived", f"{MICHAEL}: ~100x an average conversion operation", "split_2m_4k", "merge_4k_2m"),
    _row("7m", "Extra memory when a 2M folio is split", "+7 pages = 28 KiB", None, "pages per split 2M",
         "split_merge", "derived", "512 x 64 B = 8 pages; HVO keeps 1"),
    _row("8", "Merge 4K->2M / 4K->1G", "same order as the split", None, "per merge", "split_merge", "pub",
         f"{MICHAEL}; priced by rows 6 and 7"),
    _row("9", "Split 1G->2M (proposed, not implemented)", "2M split + 512 filemap entries", 60, "per split",
         "split_merge", "assumed", "cover letter <cover.1747264138.git.ackerleytng@google.com> future work; "
         "merge 2M->1G priced the same",
         "split_1g_2m", "merge_2m_1g"),
    _row("10", "Conversion bookkeeping per work item (maple-tree store, refcount scan)",
         "~320 cyc (1G sample) to ~1.1e3 cyc (2M sample)", 0.25, "per work item", "conversion", "derived",
         f"{MICHAEL}: ratios", "conversion_work_items"),
    _row("11", "Whole conversion handling, 16 GB SNP boot (calibration target)",
         "1,043,938,460 cyc (~0.35 s), split/merge ~7%", None, "total", "conversion", "pub",
         f"{MICHAEL}: kvm_gmem_convert_execute_work()"),
    _row("12", "SET_ATTR with the xarray, per 4K page", ">= ~100 ns/page (reserve + store passes)", 0.1,
         "per 4K page", "attr_store", "derived",
         "Liam Merwick <20250609091121.2497429-2-liam.merwick@oracle.com>: >=26 s soft lockup at >=1 TiB",
         "attr_xarray_pages"),
    _row("13", "SET_ATTR with a maple tree (range store)", "~1-10 µs per call", 5, "per call", "attr_store",
         "assumed", "O(log n) range store", "attr_maple_calls"),
    _row("14", "Stage-2 map on a fault, 4K", "~1 µs", 1, "per fault", "faults", "assumed", "baseline W",
         "s2_map_4k"),
    _row("15", "Stage-2 map, 2M or 1G leaf", "~1-2 µs", 1.5, "per fault", "faults", "assumed",
         "one leaf; the saving is the 511 or 262,143 faults avoided", "s2_map_2m", "s2_map_1g"),
    _row("16", "TDX private 4K fault: EPT violation + TDH.MEM.PAGE.AUG + guest ACCEPT",
         "8 µs; 153 µs under tick/HLT-exit pressure at 248 vCPUs", 8, "per accept", "accept", "pub",
         "Dstack-TEE/dstack PR #1220; a successful 2M accept (RFC) is priced as one [assumed]",
         "tdx_accept_4k", "tdx_accept_2m"),
    _row("17", "TDX accept, 4K-granular, eager in firmware", "8 GiB in ~30 s => ~14 µs per 4K", 14, "per 4K",
         "accept", "pub", "asterinas PR #1691; per-page figure derived", "tdx_accept_4k_eager"),
    _row("18", "TDX 2M split (BLOCK + TRACK + kick vCPUs + DEMOTE [+ PAMT.ADD])",
         "exclusive mmu_lock + IPI to all vCPUs", 50, "per demote", "split_merge", "assumed",
         "mechanism: Yan Zhao <20250807093950.4395-1-yan.y.zhao@intel.com>", "tdx_demote", per_vcpu=2),
    _row("19", "TDX TDH.MR.EXTEND (16 per measured 4K page, 256 B each)", "per SEAMCALL", 0.5, "per SEAMCALL",
         "populate", "src", "TDX_EXTENDMR_CHUNKSIZE = 256; per-call cost [assumed]", "tdx_mr_extend"),
    _row("19a", "TDX TDH.MEM.PAGE.ADD per 4K (not in workloads.md §4)", "~1 µs", 1, "per 4K", "populate",
         "assumed", "tdx_gmem_post_populate, 4K only [src]", "tdx_page_add"),
    _row("20", "SNP LAUNCH_UPDATE per 4K (RMPUPDATE + PSP command)", "PSP command: ~tens of µs", 30, "per 4K",
         "populate", "assumed", "sev_gmem_post_populate per-page loop [src]", "snp_launch_update_4k"),
    _row("21", "RMPUPDATE (4K or 2M, one instruction)", "~1 µs", 1, "per instruction", "accept", "assumed",
         "sev_gmem_prepare / is_large_rmp_possible [src]", "rmpupdate_4k", "rmpupdate_2m"),
    _row("22", "PSMASH (2M RMP -> 512 x 4K) + zap of the 2M GFN range", "~1 µs + zap + TLB flush", 3,
         "per psmash", "accept", "assumed", "sev_handle_rmp_fault [src]; the flush is row 27", "psmash"),
    _row("23", "PVALIDATE (guest) incl. fault handling, per instruction",
         "~3.4 µs per 4K page", 3.4, "per instruction", "accept", "derived",
         "OpenHCL PR #50: 64 GiB, 64 VPs ~57 s at 4K vs <1 s at 2M; a 2M PVALIDATE priced as one [assumed]",
         "pvalidate_4k", "pvalidate_2m"),
    _row("24", "PVALIDATE at 2M that hits a 4K RMP: 1 failed + 512 x 4K", "512 x row 23", 512 * 3.4,
         "per fallback", "accept", "src", "pval_pages fallback; T. Lendacky tianocore/edk2 PR #12774",
         "pvalidate_2m_fallback"),
    _row("25", "SNP PSC VMGEXIT (guest -> KVM), per descriptor of <=64 entries", "~2-5 µs", 3, "per VMGEXIT",
         "exits", "assumed", "batching [src snp_begin_psc]", "psc_vmgexit"),
    _row("26", "Userspace exit round trip (KVM_EXIT_HYPERCALL / MEMORY_FAULT -> VMM -> KVM_RUN)",
         "~10-30 µs", 20, "per exit", "exits", "assumed",
         "SNP: 1 per merged PSC run; MSR protocol 1 per 4K; TDX MapGPA 1 per 2 MiB [src]", "userspace_exit"),
    _row("27", "Remote TLB flush (kvm_flush_remote_tlbs) after a zap", "~2 µs + ~0.5 µs x running vCPUs", 2,
         "per flush", "tlb", "assumed", "", "tlb_flush_remote", per_vcpu=0.5),
    _row("28", "Stage-2 zap of a range, per leaf SPTE", "~50-100 ns per leaf", 0.1, "per leaf", "tlb", "assumed",
         "", "s2_zap_leaf"),
    _row("29", "Host userspace fault on a gmem mmap (4K PTE)", "~0.5-1 µs + zero if new", 0.7, "per fault",
         "faults", "assumed", "", "host_fault_4k"),
    _row("30", "Host huge userspace mapping (PMD/PUD), deferred design only", "as row 29, once per 2M/1G", 0.7,
         "per fault", "faults", "assumed", "not supported by gmem today", "host_fault_2m", "host_fault_1g"),
    _row("31", "pKVM MEM_SHARE / MEM_UNSHARE / MMIO_GUARD hypercall per granule", "~1-3 µs", 2, "per call",
         "hypercalls", "assumed", "one call per granule [src arm-pkvm-guest.c]", "pkvm_share_hvc",
         "pkvm_unshare_hvc", "pkvm_mmio_guard_hvc"),
    _row("32", "pKVM host->guest donation on a stage-2 fault", "~1-2 µs (4K); once per 2M block with THP", 1.5,
         "per fault", "faults", "assumed", "", "pkvm_donate_4k", "pkvm_donate_2m"),
    _row("33", "Direct-map removal (NO_DIRECT_MAP) per folio", "4K: a few µs; once per unsplit huge folio", 3,
         "per folio", "direct_map", "assumed", "semantics: Patrick Roy's series", "direct_map_remove"),
    _row("34", "kvm_gmem_populate source GUP per 4K", "~0.3 µs", 0.3, "per 4K", "populate", "assumed",
         "one get_user_pages_fast per page [src]", "populate_gup_4k"),
    _row("35", "Refcount spin during restructuring (transient refs)", "usually 0; rare small delay", 1,
         "per spin", "conversion", "assumed", "WARN_ONCE loop [src]", "refcount_spin"),
    _row("36", "-EAGAIN conversion failure (pinned folio)", "cost of row 10 + retry policy (userspace)", 0.25,
         "per failure", "conversion", "src", "kvm_gmem_has_safe_refcount", "conversion_eagain"),
    _row("41-4k", "Translation overhead per guest access unit on a 4K leaf", "miss_rate 0.10", 0.1,
         "per access unit", "tlb", "assumed", "§4.1: base x miss_rate, base = 1 W", "guest_access_4k"),
    _row("41-2m", "Translation overhead per guest access unit on a 2M leaf", "miss_rate 0.02", 0.02,
         "per access unit", "tlb", "assumed", "§4.1", "guest_access_2m"),
    _row("41-1g", "Translation overhead per guest access unit on a 1G leaf", "miss_rate 0.005", 0.005,
         "per access unit", "tlb", "assumed", "§4.1", "guest_access_1g"),
    _row("41m", "EPT/NPT page-table memory per 4K leaf", "8 bytes", None, "bytes per 4K leaf", "tlb",
         "derived", "4 KiB of table per 2 MiB mapped at 4K (§4.1)"),
)

VMEMMAP_PAGES = {"folios_1g_split": 4095, "folios_2m_split": 7}  # rows 6m, 7m
PTE_BYTES = 8  # row 41m


@dataclass(frozen=True)
class RowOverride:
    weight: float | None = option(Number(min=0.0), None)
    per_vcpu: float | None = option(Number(min=0.0), None)
    tag: str | None = option(Choice(TAGS), None)
    basis: str | None = option(Text(), None)
    name: str = ""


@dataclass(frozen=True)
class CostOverrides:
    rows: tuple[RowOverride, ...] = option(TableOf(RowOverride), ())


@dataclass(frozen=True)
class ModelledTime:
    """Modelled time in µs by category and by row, and the counters nothing priced."""

    by_category: dict[str, float] = field(default_factory=dict)
    by_row: dict[str, float] = field(default_factory=dict)
    unpriced: tuple[str, ...] = ()

    @property
    def total_us(self) -> float:
        return sum(self.by_category.values())


@dataclass(frozen=True)
class CostTable:
    rows: tuple[CostRow, ...] = DEFAULT_ROWS
    source: str = "workloads.md §4"

    def row(self, row_id: str) -> CostRow:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise KeyError(row_id)

    def pricing(self) -> dict[str, CostRow]:
        """Counter name -> the row that prices it."""
        return {counter: row for row in self.rows for counter in row.counters}

    def modelled_time(self, counters: Mapping[str, int | float], vcpus: int = 1) -> ModelledTime:
        """Counters -> µs by category (every category present, zero if unused) and by row."""
        pricing = self.pricing()
        by_category = dict.fromkeys(CATEGORIES, 0.0)
        by_row: dict[str, float] = {}
        unpriced = []
        for name, count in counters.items():
            row = pricing.get(name)
            if row is None:
                if count and name not in VMEMMAP_PAGES and name != "s2_leaves_4k":
                    unpriced.append(name)
                continue
            time = row.cost(vcpus) * count
            by_category[row.category] += time
            by_row[row.id] = by_row.get(row.id, 0.0) + time
        return ModelledTime(by_category, by_row, tuple(sorted(unpriced)))

    def with_overrides(self, path: str | Path) -> CostTable:
        """This table with the ``[rows.<id>]`` overrides of a TOML file applied (validated)."""
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise fail(source, "", f"cannot read: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise fail(source, "", f"invalid TOML: {exc}") from None
        overrides = build(CostOverrides, raw, "", source)
        ids = [row.id for row in self.rows]
        rows = list(self.rows)
        for ov in overrides.rows:
            if ov.name not in ids:
                raise fail(source, f"rows.{ov.name}", "no such cost row" + did_you_mean(ov.name, ids))
            i = ids.index(ov.name)
            if rows[i].weight is None and ov.weight is not None:
                raise fail(source, f"rows.{ov.name}.weight", "this row is informational and has no weight")
            changes = {k: getattr(ov, k) for k in ("weight", "per_vcpu", "tag", "basis") if getattr(ov, k) is not None}
            rows[i] = replace(rows[i], **changes)
        return CostTable(tuple(rows), f"{self.source} + {source}")


def memory_overhead_bytes(counters: Mapping[str, int]) -> int:
    """Extra memory from split HugeTLB folios (rows 6m, 7m) and 4K stage-2 leaves (row 41m).

    Counters: ``folios_1g_split`` / ``folios_2m_split`` (folios split *now*), ``s2_leaves_4k``.
    """
    vmemmap = sum(counters.get(name, 0) * pages * PAGE for name, pages in VMEMMAP_PAGES.items())
    return vmemmap + counters.get("s2_leaves_4k", 0) * PTE_BYTES


def load_cost_table(path: str | Path | None = None) -> CostTable:
    """The §4 table, with the overrides in ``path`` if given."""
    table = CostTable()
    return table.with_overrides(path) if path is not None else table
