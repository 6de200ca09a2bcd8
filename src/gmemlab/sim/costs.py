"""The cost model of workloads.md §4 as one table of weights, with the source behind every weight.

Each :class:`CostRow` keeps the row id of §4 (``"6"``, ``"6m"``; §4.1 rows are ``"41-4k"`` etc.; rows this
lab adds carry a letter, e.g. ``"19a"``), the estimate as published, a weight in **W = 1 µs** (the cost of a
4K stage-2 map on a TDP fault, §4), the tag (``src``, ``pub``, ``derived``, ``measured``, ``assumed``), the
basis, the sources it rests on (ids of :data:`SOURCES`, so a calibration check can tell whether a weight is
independent of the figure it is checked against), the category it is reported under and the counters it
prices.

A ``derived`` row says from what: ``of = ("23", 513)`` makes its weight 513 x row 23's, so changing row 23
(an override, the sensitivity analysis) changes it too, and it counts as ``assumed`` in the provenance
shares when the row it is derived from is (:meth:`CostTable.is_assumed`).

Two kinds of rows: ``cpu`` rows price work some CPU does (host CPU time by category, and the boot critical
path, :mod:`gmemlab.sim.timing`); the §4.1 ``dataplane`` rows price translation overhead per unit of guest
work and never add into CPU time. Rows with ``weight = None`` are informational (calibration targets or
memory), priced by nothing.

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
DATAPLANE = "translation"  # the §4.1 rows' category: overhead per second of guest work, not CPU time
CYCLES_PER_US = 3000  # §4: "convert at 3 GHz [assumed] unless the source gives time"

# Where numbers come from (workloads.md §4, linux-7.md §4). A weight and a calibration check that name the
# same source id are not independent (gmemlab validate says so).
SOURCES: dict[str, str] = {
    "roth-16g": "Michael Roth <20250712001055.3in2lnjz6zljydq2@amd.com>, 16 GB SNP guest, 1G/2M HugeTLB",
    "merwick-lockup": "Liam Merwick <20250609091121.2497429-2-liam.merwick@oracle.com>, >=1 TiB SNP soft lockup",
    "dstack-1220": "Dstack-TEE/dstack PR #1220 (TDX lazy accept, 248 vCPUs)",
    "asterinas-1691": "asterinas PR #1691 (TDX eager accept of 8 GB)",
    "openhcl-50": "microsoft/openvmm (OpenHCL) PR #50 (64 GiB, 64 VPs, 4K vs 2M PVALIDATE)",
    "edk2-12774": "Tom Lendacky, tianocore/edk2 PR #12774 (2M PVALIDATE falls back to 512 x 4K)",
    "cloud-vm": "memset microbenchmark on a 2-vCPU cloud VM (workloads.md §4 rows 3-5)",
    "ackerley-xarray": "Ackerley Tng <diqz8qfh69uq.fsf@google.com> (xarray nodes per 1G split)",
    "chv-8501": "cloud-hypervisor PR 8501 (SNP + VFIO pinned memory)",
    "yan-v3": "Yan Zhao <20260106101646.24809-1-yan.y.zhao@intel.com> (TDX huge pages v3 cover)",
    "kravetz-hvo": "Mike Kravetz <20231019023113.345257-1-mike.kravetz@oracle.com>, HVO optimize/restore times",
    "kata-13535": "kata-containers/kata-containers #13535 (eager-accept TDVF, 64 GB TD)",
    "kernel": "kernel source (sev.c, tdx.c, guest_memfd.c, xarray.h; commits in workloads.md)",
}


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
    sources: tuple[str, ...] = ()
    of: tuple[str, float] | None = None  # derived: weight = factor x that row's weight (and per_vcpu)

    @property
    def kind(self) -> str:
        return "dataplane" if self.category == DATAPLANE else "cpu"


def _row(id_: str, operation: str, estimate: str, weight: float | None, unit: str, category: str, tag: str,
         basis: str, *counters: str, per_vcpu: float = 0.0, sources: tuple[str, ...] = (),
         of: tuple[str, float] | None = None) -> CostRow:
    return CostRow(id_, operation, estimate, weight, unit, category, tag, basis, counters, per_vcpu, sources, of)


MICHAEL = "Michael Roth, 16 GB SNP guest"

DEFAULT_ROWS: tuple[CostRow, ...] = (
    _row("1", "Allocate order-0 folio (buddy)", "~0.2-0.5 µs", 0.3, "per folio", "alloc", "assumed", "",
         "folio_alloc_4k"),
    _row("2", "Allocate HugeTLB folio from the reserved pool (2M or 1G, no zeroing)", "~1-5 µs", 2, "per folio",
         "alloc", "assumed", "list dequeue + accounting; subpool pre-reserved (§3.1)", "folio_alloc_huge"),
    _row("3", "Zero 4 KiB", "0.26 µs", 0.3, "per 4K", "zeroing", "measured",
         "memset per 4K page, warm cache, 2-vCPU cloud VM", "zero_4k", sources=("cloud-vm",)),
    _row("4", "Zero 2 MiB (a whole 2M folio on its first guest fault, §3.7)", "~140 µs (~15 GB/s cached stores)",
         140, "per 2M", "zeroing", "measured", "2-vCPU cloud VM", "zero_2m", sources=("cloud-vm",)),
    _row("5", "Zero 1 GiB (a whole 1G folio on its first guest fault, §3.7)",
         "22 ms (non-temporal) to ~70 ms (cached)", 7e4, "per 1G", "zeroing", "measured",
         "2-vCPU cloud VM; the cached-store end, consistent with row 4 x 512", "zero_1g", sources=("cloud-vm",)),
    _row("6", "Split or merge 1G<->4K (HugeTLB + HVO restore + 262,144 filemap entries)",
         "46,475,980 cyc (~15 ms)", 46_475_980 / CYCLES_PER_US, "per split or merge", "split_merge", "pub",
         f"{MICHAEL}: 46475980 cycles vs 320 for a normal conversion; at 3 GHz [assumed]",
         "split_1g_4k", "merge_4k_1g", sources=("roth-16g",)),
    _row("6m", "Extra memory when a 1G folio is split (HVO undone)", "+4,095 pages = 16 MiB vmemmap", None,
         "pages per split 1G", "split_merge", "derived", "262,144 struct pages x 64 B; HVO keeps 1 page",
         sources=("kernel",)),
    _row("6x", "Filemap xarray nodes a 1G->4K split adds", "1 + 64 + 4,096 nodes x 576 B = 2,396,736 B", None,
         "bytes per split 1G", "split_merge", "derived", "XA_CHUNK_SHIFT = 6, sizeof(struct xa_node) = 576 [src]; "
         "1G->2M: 1 + 64 nodes; 2M->4K: 8 nodes", sources=("kernel",)),
    _row("7", "Split 2M->4K (HugeTLB: HVO restore of the vmemmap)", "64.5 µs unbatched restore per 2M folio",
         64.5, "per split", "split_merge", "derived",
         "Mike Kravetz HVO batching cover, bare metal, unbatched: (36.748 - 4.477) s / 500,000 folios; "
         "the 512 filemap re-inserts of the split are not priced (workloads.md gives ~1e5 cyc from Michael "
         "Roth's ~100x, the figure it is checked against)", "split_2m_4k", sources=("kravetz-hvo",)),
    _row("7m", "Extra memory when a 2M folio is split", "+7 pages = 28 KiB", None, "pages per split 2M",
         "split_merge", "derived", "512 x 64 B = 8 pages; HVO keeps 1", sources=("kernel",)),
    _row("8", "Merge 4K->2M (HugeTLB: HVO optimize again)", "49.7 µs unbatched optimize per 2M folio", 49.7,
         "per merge", "split_merge", "derived",
         "Mike Kravetz HVO batching cover, bare metal, unbatched: (28.973 - 4.119) s / 500,000 folios; "
         "4K->1G merges are priced by row 6", "merge_4k_2m", sources=("kravetz-hvo",)),
    _row("9", "Split 1G->2M (proposed, not implemented)", "2M split + 512 filemap entries", 60, "per split",
         "split_merge", "assumed", "cover letter <cover.1747264138.git.ackerleytng@google.com> future work; "
         "merge 2M->1G priced the same", "split_1g_2m", "merge_2m_1g"),
    _row("10", "Conversion bookkeeping per work item (maple-tree store, refcount scan)",
         "~320 cyc (1G sample) to ~1.1e3 cyc (2M sample)", 0.25, "per work item", "conversion", "derived",
         f"{MICHAEL}: 320 cyc (1G) and 46475980/320 vs ~100x (2M) => 320-1.1e3 cyc, midpoint at 3 GHz [assumed]",
         "conversion_work_items", sources=("roth-16g",)),
    _row("11", "Whole conversion handling, 16 GB SNP boot (calibration target)",
         "1,043,938,460 cyc (~0.35 s), split/merge ~7%", None, "total", "conversion", "pub",
         f"{MICHAEL}: kvm_gmem_convert_execute_work(); checked by gmemlab validate", sources=("roth-16g",)),
    _row("12", "SET_ATTR with the xarray, per 4K page (xa_reserve + xa_store)", "~2 x 59 ns per page",
         2 * 46_475_980 / 262_144 / CYCLES_PER_US, "per 4K page", "attr_store", "derived",
         f"{MICHAEL}: a 1G split re-inserts 262,144 filemap entries in 46,475,980 cycles, <= 177 cycles "
         "(59 ns at 3 GHz [assumed]) per store, two xarray passes per page; an upper bound (the split also "
         "restores HVO). Independent of Liam Merwick's >=26 s lockup, which checks it (gmemlab validate)",
         "attr_xarray_pages", sources=("roth-16g",)),
    _row("13", "SET_ATTR with a maple tree (range store)", "~1-10 µs per call", 5, "per call", "attr_store",
         "assumed", "O(log n) range store", "attr_maple_calls"),
    _row("14", "Stage-2 map on a fault, 4K", "~1 µs", 1, "per fault", "faults", "assumed", "baseline W",
         "s2_map_4k"),
    _row("15", "Stage-2 map, 2M or 1G leaf", "~1-2 µs", 1.5, "per fault", "faults", "assumed",
         "one leaf; the saving is the 511 or 262,143 faults avoided", "s2_map_2m", "s2_map_1g"),
    _row("16", "TDX private 4K fault: EPT violation + TDH.MEM.PAGE.AUG + guest ACCEPT",
         "8 µs; 153 µs under tick/HLT-exit pressure at 248 vCPUs", 8, "per accept", "accept", "pub",
         "Dstack-TEE/dstack PR #1220 (early in bring-up); eager and firmware accepts take the same TDCALL "
         "path; a successful 2M accept (RFC) is priced as one [assumed]",
         "tdx_accept_4k", "tdx_accept_2m", sources=("dstack-1220",)),
    _row("17", "TDX accept, 4K-granular, eager, 8 GiB (calibration target)", "8 GiB in ~30 s => ~14 µs per 4K",
         None, "total", "accept", "pub", "asterinas PR #1691; priced by row 16, checked by gmemlab validate",
         sources=("asterinas-1691",)),
    _row("18", "TDX 2M split (BLOCK + TRACK + kick vCPUs + DEMOTE [+ PAMT.ADD])",
         "exclusive mmu_lock + IPI to all vCPUs", 50, "per demote", "split_merge", "assumed",
         "mechanism: Yan Zhao <20250807093950.4395-1-yan.y.zhao@intel.com>", "tdx_demote", per_vcpu=2),
    _row("18a", "TDX removal of a private S-EPT leaf (BLOCK + TRACK + kick every vCPU + REMOVE)",
         "one broadcast to the running vCPUs per leaf", 2, "per leaf", "tlb", "derived",
         "tdx_sept_remove_private_spte [src]: priced as one remote TLB flush (row 27)", "tdx_sept_remove",
         of=("27", 1)),
    _row("19", "TDX TDH.MR.EXTEND (16 per measured 4K page, 256 B each)", "per SEAMCALL", 0.5, "per SEAMCALL",
         "populate", "assumed", "count: TDX_EXTENDMR_CHUNKSIZE = 256 [src]; per-call cost assumed",
         "tdx_mr_extend"),
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
         "OpenHCL PR #50: 64 GiB ~57 s at 4K => 57 s / 16.8M pages (Hyper-V, not KVM); "
         "a 2M PVALIDATE priced as one [assumed]", "pvalidate_4k", "pvalidate_2m", sources=("openhcl-50",)),
    _row("24", "PVALIDATE at 2M that hits a 4K RMP: 1 failed + 512 x 4K", "513 x row 23", 513 * 3.4,
         "per fallback", "accept", "derived", "from row 23: the failed 2M attempt plus 512 x 4K "
         "(pval_pages fallback [src]; T. Lendacky tianocore/edk2 PR #12774)", "pvalidate_2m_fallback",
         sources=("edk2-12774",), of=("23", 513)),
    _row("25", "SNP PSC VMGEXIT (guest -> KVM), per descriptor of <=64 entries", "~2-5 µs", 3, "per VMGEXIT",
         "exits", "assumed", "batching [src snp_begin_psc]", "psc_vmgexit"),
    _row("26", "Userspace exit round trip (KVM_EXIT_HYPERCALL / MEMORY_FAULT -> VMM -> KVM_RUN)",
         "~10-30 µs", 20, "per exit", "exits", "assumed",
         "SNP: 1 per merged PSC run; MSR protocol 1 per 4K; TDX MapGPA 1 per 2 MiB [src]", "userspace_exit"),
    _row("27", "Remote TLB flush (kvm_flush_remote_tlbs) after a zap", "~2 µs + ~0.5-1.1 µs x running vCPUs", 2,
         "per flush", "tlb", "assumed", "base assumed; per vCPU: midpoint of 0.55-1.1 µs, Mike Kravetz's "
         "252-vCPU VM figures (140-280 µs per broadcast flush, docs/calibration.md §3) [a sanity source]",
         "tlb_flush_remote", per_vcpu=0.83, sources=("kravetz-hvo",)),
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
         "one get_user_pages_fast per page [src]; none for SNP ZERO pages (src = NULL)", "populate_gup_4k"),
    _row("34c", "SNP kvm_gmem_populate source copy per 4K (sev_gmem_post_populate copies the source page)",
         "~0.5 µs", 0.6, "per 4K", "populate", "derived", "from row 3: copying 4 KiB reads and writes 4 KiB, "
         "priced as two 4 KiB memsets [assumed factor]; none for an in-place launch (NULL source, linux-7.md "
         "1.3) or ZERO pages; TDX's PAGE.ADD copies inside row 19a", "populate_copy_4k", of=("3", 2)),
    _row("35", "Refcount spin during restructuring (transient refs)", "usually 0; rare small delay", 1,
         "per spin", "conversion", "assumed", "WARN_ONCE loop [src]; counted when a split or merge meets a "
         "short-term GUP pin (host_access.pins.longterm = false)", "refcount_spin"),
    _row("36", "-EAGAIN conversion failure (pinned folio)", "cost of row 10 + retry policy (userspace)", 0.25,
         "per failure", "conversion", "derived", "from row 10: the work done until kvm_gmem_has_safe_refcount "
         "fails [src]; no retry modelled", "conversion_eagain", of=("10", 1)),
    _row("41-4k", "Translation overhead per unit of guest work on 4K leaves", "miss_rate 0.10", 0.1,
         "per unit of guest work", DATAPLANE, "assumed", "§4.1: base x miss_rate, base = 1", "guest_access_4k"),
    _row("41-2m", "Translation overhead per unit of guest work on 2M leaves", "miss_rate 0.02", 0.02,
         "per unit of guest work", DATAPLANE, "assumed", "§4.1", "guest_access_2m"),
    _row("41-1g", "Translation overhead per unit of guest work on 1G leaves", "miss_rate 0.005", 0.005,
         "per unit of guest work", DATAPLANE, "assumed", "§4.1", "guest_access_1g"),
    _row("41m", "EPT/NPT page-table memory per 4K leaf", "8 bytes", None, "bytes per 4K leaf", DATAPLANE,
         "derived", "4 KiB of table per 2 MiB mapped at 4K (§4.1)", sources=("kernel",)),
)


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
class CostTable:
    """The rows, with derived weights resolved (:meth:`cost`)."""

    rows: tuple[CostRow, ...] = DEFAULT_ROWS
    source: str = "workloads.md §4"
    _by_id: dict[str, CostRow] = field(init=False, repr=False, compare=False)
    _pricing: dict[str, CostRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {row.id: row for row in self.rows})
        object.__setattr__(self, "_pricing", {c: row for row in self.rows for c in row.counters})

    def row(self, row_id: str) -> CostRow:
        return self._by_id[row_id]

    def pricing(self) -> dict[str, CostRow]:
        """Counter name -> the row that prices it."""
        return self._pricing

    def weights(self, row: CostRow) -> tuple[float, float]:
        """(weight, per_vcpu) in µs, following ``of`` for derived rows."""
        if row.of is not None:
            base, factor = row.of
            w, p = self.weights(self._by_id[base])
            return w * factor, p * factor
        return row.weight or 0.0, row.per_vcpu

    def cost(self, row: CostRow | str, vcpus: int = 1) -> float:
        """µs for one counted event of ``row`` with ``vcpus`` vCPUs."""
        if isinstance(row, str):
            row = self._by_id[row]
        w, p = self.weights(row)
        return w + p * vcpus

    def is_assumed(self, row: CostRow | str) -> bool:
        """Whether the row's weight rests on an assumption: tagged ``assumed``, or derived from such a row."""
        if isinstance(row, str):
            row = self._by_id[row]
        if row.tag == "assumed":
            return True
        return row.of is not None and self.is_assumed(row.of[0])

    def derived_from(self, row: CostRow) -> list[str]:
        """The rows a derived row's weight follows (transitively), nearest first."""
        out: list[str] = []
        while row.of is not None:
            out.append(row.of[0])
            row = self._by_id[row.of[0]]
        return out

    def scaled(self, factors: Mapping[str, float]) -> CostTable:
        """This table with each named row's weight and per_vcpu multiplied (rows derived from it follow)."""
        rows = []
        for row in self.rows:
            f = factors.get(row.id)
            if f is not None and row.of is None and row.weight is not None:
                row = replace(row, weight=row.weight * f, per_vcpu=row.per_vcpu * f)
            rows.append(row)
        return CostTable(tuple(rows), self.source)

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
            changes: dict[str, object] = {
                k: getattr(ov, k) for k in ("weight", "per_vcpu", "tag", "basis") if getattr(ov, k) is not None
            }
            if rows[i].of is not None and ("weight" in changes or "per_vcpu" in changes):
                changes["of"] = None  # an explicit weight replaces the derivation
                if "tag" not in changes:
                    changes["tag"] = "assumed"
            rows[i] = replace(rows[i], **changes)  # type: ignore[arg-type]
        return CostTable(tuple(rows), f"{self.source} + {source}")


def load_cost_table(path: str | Path | None = None) -> CostTable:
    """The §4 table, with the overrides in ``path`` if given."""
    table = CostTable()
    return table.with_overrides(path) if path is not None else table


XA_NODE_BYTES = 576  # sizeof(struct xa_node), XA_CHUNK_SHIFT = 6 (row 6x)
FILEMAP_NODES = {"1G->4K": 1 + 64 + 4096, "1G->2M": 1 + 64, "2M->4K": 8}  # new nodes per split (row 6x)


def filemap_xarray_bytes(split_1g: int, split_2m: int, staged: bool) -> int:
    """Filemap xarray memory held by ``split_1g`` 1 GiB and ``split_2m`` 2 MiB folios now split (row 6x)."""
    big = FILEMAP_NODES["1G->2M" if staged else "1G->4K"]
    return (split_1g * big + split_2m * FILEMAP_NODES["2M->4K"]) * XA_NODE_BYTES
