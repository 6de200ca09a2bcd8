"""Scenario files: TOML validated into typed, frozen dataclasses (workloads.md §5 common schema).

A scenario is a built-in name (``src/gmemlab/scenarios/<name>.toml``) or a path to a user's file.
``--set key=value`` overrides use dotted keys (``guest_mem=1TiB``, ``accept.mode=eager``,
``shared_regions.swiotlb.align=2MiB``); a value is read as TOML when it parses (``vcpus=32``,
``gmem_flags.mmap=false``) and as a plain string otherwise (``guest_mem=1TiB``). Every error is a
:class:`gmemlab.errors.UsageError` reading ``<file or --set ...>: <key.path>: <reason>``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..uapi import PAGE_SIZE, PROFILES
from . import derived
from .regions import RULES, RegionRule
from .schema import (
    ALL,
    Amount,
    ArrayOf,
    Bool,
    Choice,
    Count,
    Levels,
    LevelSize,
    Nested,
    Number,
    Portion,
    Size,
    SizeDist,
    StrMap,
    TableOf,
    Text,
    build,
    did_you_mean,
    fail,
    nested,
    option,
    spec_at,
)
from .units import GiB, MiB, format_size

ARCHES = ("none", "snp", "tdx", "pkvm")
ARCH_NAMES = {"none": "non-CoCo", "snp": "SNP", "tdx": "TDX", "pkvm": "pKVM"}
CONVERTING = ("snp", "tdx", "pkvm")  # arches with private memory, hence conversions
ACCEPTING = ("snp", "tdx")  # arches whose guests accept memory (EFI unaccepted memory)
PAGE = Size(min=PAGE_SIZE, multiple_of=PAGE_SIZE)
AMOUNT = Size(multiple_of=PAGE_SIZE)
PORTION = Amount(multiple_of=PAGE_SIZE)
LOCATIONS = ("rule", "low", "top", "low_normal", "scattered")


@dataclass(frozen=True)
class Backing:
    """Folio allocator behind the guest_memfd (§3.1; pKVM THP blocks §1.4)."""

    allocator: str = option(Choice(("hugetlb", "buddy", "buddy_thp")), "hugetlb",
                            doc="folio allocator: HugeTLB pool, buddy 4K pages, or buddy THP 2M blocks (pKVM)")
    page: int = option(LevelSize(), GiB, doc="folio size: 4K (buddy), 2M (THP or HugeTLB), 1G (HugeTLB)")


@dataclass(frozen=True)
class GmemFlags:
    """KVM_CREATE_GUEST_MEMFD flags (§0): MMAP, and INIT_SHARED (``shared``) or private by default."""

    mmap: bool = option(Bool(), True, doc="GUEST_MEMFD_FLAG_MMAP: the VMM may mmap the file (host faults)")
    init: str = option(Choice(("shared", "private")), "private",
                       doc="initial state of the file: INIT_SHARED (non-CoCo, mmap populate) or private")


@dataclass(frozen=True)
class PopulateRange:
    """One payload range loaded before the guest runs (§5.2 from the amd/sev-utils#17 trace)."""

    size: int = option(PAGE, doc="bytes loaded (firmware, kernel, initrd, ...)")
    name: str = option(Text(), "", doc="a label for messages and the event stream")
    gpa: int | None = option(AMOUNT, None, doc="placed top-down in RAM when absent or outside RAM")
    type: str = option(Choice(("normal", "zero")), "normal",
                       doc="SNP launch page type: zero (SNP_PAGE_TYPE_ZERO: no source to copy) or normal (every "
                       "other type, SECRETS and CPUID too: a source is copied)",
                       arches=("snp",), why="SNP_LAUNCH_UPDATE page types are SEV-SNP's")
    measure: bool = option(Bool(), False, doc="TDX: TDH.MR.EXTEND x16 per 4K page",
                           arches=("tdx",), why="TDH.MR.EXTEND, KVM_TDX_MEASURE_MEMORY_REGION, is TDX's")


@dataclass(frozen=True)
class PopulateSpec:
    """How the VMM loads the payload (§1.2 (a) kvm_gmem_populate vs (b) mmap in place; §1.1; §1.4)."""

    method: str = option(
        Choice(("none", "gmem_populate", "mmap_inplace", "vmm_write", "vmm_write_then_donate")), "none",
        doc="gmem_populate: kvm_gmem_populate copies in; mmap_inplace: write through the gmem mapping while "
        "shared, then convert; vmm_write: plain host write; vmm_write_then_donate: shared, written, converted",
    )
    prealloc: bool = option(Bool(), False, doc="FALLOC the whole file first (§1.2 Vishal's recipe)")
    ranges: tuple[PopulateRange, ...] = option(ArrayOf(PopulateRange), ())
    vmsa_per_vcpu: int = option(Number(integer=True, min=0), 0, doc="SNP: VMSA pages launched per vCPU",
                                arches=("snp",), why="snp_launch_update_vmsa encrypts each vCPU's VMSA into the "
                                "launch; TDX's TDVPR pages are not guest memory")
    convert_rest_to_private: str = option(
        Choice(("late", "never")), "late", doc="mmap_inplace on a shared file: convert RAM private before launch",
        arches=CONVERTING, why="a non-CoCo guest has no private memory to convert to")


@dataclass(frozen=True)
class PreWatermark:
    """Acceptance before the zone watermarks exist (docs/placement.md A8): until ``init_per_zone_wmark_min()`` (a
    postcore initcall) every allocation accepts a 4 MiB block, on the boot vCPU during SMP bring-up
    (``cond_accept_memory``). Amount [assumed]: ``fixed + per_vcpu x vCPUs``, from the one published point
    (dstack #1220: about 13 GiB at 248 vCPUs). ``per_vcpu = 0`` models dstack's patch that keeps a reserve."""

    per_vcpu: int = option(AMOUNT, 54 * MiB, doc="accepted per vCPU brought up [assumed, dstack #1220]")
    fixed: int = option(AMOUNT, 64 * MiB, doc="[assumed]")


@dataclass(frozen=True)
class AcceptSpec:
    """Guest memory acceptance (§1.2, §1.3; docs/placement.md §1): lazy in ``chunk`` (4 MiB) steps, eager, or none."""

    mode: str = option(Choice(("lazy", "eager", "none")), "none",
                       doc="lazy: accepted as the guest allocates; eager: all at boot (accept_memory=eager); "
                       "none: no acceptance (arch none, pkvm)")
    firmware: str = option(Choice(("below_4g", "all")), "below_4g",
                           doc="what the firmware accepts: OVMF all RAM below 4 GiB, eager TDVF/stage0 all")
    unit: int = option(PAGE, 2 * MiB, doc="EFI unaccepted bitmap unit (accept_memory rounds to it, + 1 guard)")
    chunk: int = option(PAGE, 4 * MiB, doc="MAX_PAGE_ORDER block accepted per lazy step")
    # Portion values are immutable (no setters), so sharing a default is safe.
    used_at_boot: Portion = option(PORTION, Portion(size=512 * MiB),  # noqa: RUF009
                                   doc="page-allocator memory the boot uses [assumed]; + wmark_promo accepted")
    accepted_eventually: Portion = option(PORTION, ALL, doc="size, fraction of guest_mem or all")  # noqa: RUF009
    psc_entry_size: int = option(LevelSize(), 2 * MiB, doc="SNP: largest PSC entry the guest uses",
                                 arches=("snp",), why="__set_pages_state builds SEV-SNP's GHCB page-state-change "
                                 "entries; TDX guests MapGPA whole ranges")
    pvalidate_size: int = option(LevelSize(), 2 * MiB, doc="SNP: PVALIDATE size tried first",
                                 arches=("snp",), why="PVALIDATE, pvalidate_pages, is SEV-SNP's; TDX guests accept "
                                 "at accept.guest_try_levels")
    guest_try_levels: tuple[int, ...] = option(
        Levels(), (GiB, 2 * MiB, PAGE_SIZE), doc="TDX accept levels tried per aligned piece",
        arches=("tdx",), why="tdx_accept_memory tries TDG.MEM.PAGE.ACCEPT at 1G, 2M, then 4K; SNP guests PVALIDATE "
        "at accept.pvalidate_size")
    pre_watermark: PreWatermark = field(default_factory=PreWatermark, metadata=nested(PreWatermark))


@dataclass(frozen=True)
class SharedRegion:
    """Memory the guest makes shared (§1.2-§1.4; docs/placement.md §2): a Linux/OVMF ``rule`` and its overrides.

    ``size``, ``count``, ``align`` and ``protocol`` default to the rule's (:mod:`gmemlab.workload.regions`);
    ``location = "rule"`` places it where the kernel or firmware does (:mod:`gmemlab.arch.regions`), the
    others are explicit alternatives.
    """

    name: str
    rule: str = option(Choice(tuple(RULES)), "", doc="default: the region's name if it is a rule, else custom")
    size: int | None = option(Size(min=PAGE_SIZE, multiple_of=PAGE_SIZE, auto=True), None,
                              doc="auto = the rule's size")
    count: int | str | None = option(Count(), None, doc="an integer or \"vcpus\"; default: the rule's")
    align: int | None = option(PAGE, None, doc="default: the rule's")
    location: str = option(Choice(LOCATIONS), "rule",
                           doc="rule: as Linux/OVMF place it; low: top-down below 4 GiB; top: top-down from the "
                           "top of RAM; low_normal: just above 4 GiB; scattered: random in RAM")
    protocol: str = option(Choice(("rule", "ghcb", "msr")), "rule", doc="SNP: GHCB PSC or early MSR protocol",
                           arches=("snp",), why="the GHCB page-state-change and MSR protocols are SEV-SNP's")
    granule: int = option(PAGE, PAGE_SIZE, doc="pKVM hypercall granule",
                          arches=("pkvm",), why="a pKVM guest issues one MEM_SHARE or MMIO_GUARD_MAP call per "
                          "hypervisor granule, ARM_SMCCC_KVM_FUNC_HYP_MEMINFO; SNP and TDX convert whole runs")
    pool: bool = option(Bool(), False, doc="part of the host-accessed shared pool (host_access)")

    @property
    def kind(self) -> RegionRule:
        return RULES[self.rule]

    @property
    def ram(self) -> bool:
        return self.kind.ram

    @property
    def msr(self) -> bool:
        return (self.kind.protocol if self.protocol == "rule" else self.protocol) == "msr"


@dataclass(frozen=True)
class Churn:
    """Conversions after boot (§1.2 Runtime; §5.8 churn-pingpong)."""

    pattern: str = option(Choice(("dma_coherent", "pingpong")), "dma_coherent",
                          doc="dma_coherent: alloc (to shared) + free (to private); pingpong: one 4K page")
    rate_per_s: float = option(Number(min=0.0), 0.0, doc="conversions (each a to-shared and a to-private) "
                               "per simulated second of runtime_s")
    size_dist: tuple[tuple[int, float], ...] = option(SizeDist(), ((PAGE_SIZE, 1.0),),
                                                      doc="size of each conversion: size = probability")
    locality: str = option(Choice(("accepted_normal", "low_memory_biased", "uniform")), "accepted_normal",
                           doc="accepted_normal: the accepted part of ZONE_NORMAL (docs/placement.md §2.1); "
                           "low_memory_biased: 80% below 4 GiB; uniform: all RAM")
    neighbour_of_pool: float = option(Number(min=0.0, max=1.0), 0.0,
                                      doc="probability a conversion lands in a folio holding pool pages")


@dataclass(frozen=True)
class GuestTouch:
    """First touches of guest memory outside acceptance (§5.1 ``guest_touch``; pKVM donation §1.4)."""

    fraction_of_mem: float = option(Number(min=0.0, max=1.0), 0.0,
                                    doc="part of guest memory the guest touches at runtime (faults it in)")


@dataclass(frozen=True)
class Pins:
    longterm: bool = option(Bool(), False, doc="FOLL_LONGTERM pins (VFIO/iommufd DMA): they block conversion")
    fraction: float = option(Number(min=0.0, max=1.0), 0.0, doc="fraction of pool pages pinned")


@dataclass(frozen=True)
class HostAccess:
    """Host userspace access to shared memory (§5.1 scattered_4k; §1.5 DPDK pool)."""

    pattern: str = option(Choice(("none", "scattered_4k", "pool")), "none",
                          doc="scattered_4k: host DMA to 4K pages anywhere (non-CoCo virtio); pool: host maps "
                          "the shared pool regions (DPDK)")
    touched_fraction: float = option(Number(min=0.0, max=1.0), 0.0,
                                     doc="scattered_4k: of all pages; pool: of the pool")
    pins: Pins = field(default_factory=Pins, metadata=nested(
        Pins, arches=CONVERTING, why="pins are taken on the shared pool, shared regions with pool = true, and only "
        "a guest with private memory shares regions"))


# The largest stage-2 leaf each arch allows (``arch_limits.private_max_level = "auto"``): the TDP cap on non-CoCo
# and pKVM (max_huge_page_level); SNP 2M (the RMP has no 1G entries); TDX 2M with Yan Zhao's huge-page series
# v3 (the model's default; upstream is 4K).
ARCH_MAX_LEVEL = {"none": GiB, "pkvm": GiB, "snp": 2 * MiB, "tdx": 2 * MiB}


@dataclass(frozen=True)
class ArchLimits:
    """Hardware and KVM limits the model enforces (§2.1 1 and 2c, §1.3 TDX huge pages); read by the engine
    (:func:`gmemlab.sim.machine.host_config`)."""

    private_max_level: int | None = option(
        LevelSize(auto=True), None,
        doc="largest stage-2 leaf for private memory; non-CoCo and pKVM: the TDP cap (max_huge_page_level) on "
        "every leaf; SNP: 2M or 4K (the largest RMP entry KVM assigns; no 1G RMP entries); TDX: 2M (Yan Zhao's "
        "v3) or 4K (upstream); auto: the arch's largest (1G, SNP 2M, TDX 2M)")
    map_gpa_chunk: int = option(PAGE, 2 * MiB, doc="TDX_MAP_GPA_MAX_LEN (older QEMU: 64 MiB)",
                                arches=("tdx",), why="tdx_map_gpa exits to userspace once per TDX_MAP_GPA_MAX_LEN "
                                "piece of a MapGPA; SNP exits once per merged PSC run, snp_begin_psc")


@dataclass(frozen=True)
class Scenario:
    """One validated scenario (§5). ``source`` is where it was read from, for messages."""

    name: str = option(Text(), "", doc="default: the file name without .toml")
    description: str = option(Text(), "", doc="one line, shown by gmemlab scenarios")
    arch: str = option(Choice(ARCHES), "none", doc="the guest's confidential-computing architecture (none: "
                       "ordinary VM on guest_memfd)")
    guest_mem: int = option(Size(min=2 * MiB, multiple_of=2 * MiB), 64 * GiB, doc="guest RAM (one guest_memfd)")
    vcpus: int = option(Number(integer=True, min=1, max=4096), 16, doc="vCPUs (boot work runs on them in parallel)",
                        arches=CONVERTING, why="nothing simulated for a non-CoCo guest depends on its vCPUs: no "
                        "acceptance, no per-vCPU shared pages, no stage-2 zap while it runs to kick them")
    policy: str = option(Choice(("eager", "deferred")), "eager", doc="split policy under test (§2.3)")
    merge: str = option(Choice(("eager", "lazy", "never")), "eager",
                        doc="when split huge folios merge back: eager (when all private again), lazy (at "
                        "truncate: deferred), never", arches=CONVERTING,
                        why="split folios merge back once all their pages are private again, and a non-CoCo guest "
                        "has no private pages")
    attr_store: str = option(Choice(("xarray", "maple")), "xarray", doc="VM attribute store (§0)")
    set_attr_private: bool = option(Bool(), False, doc="VMM sets the whole slot private at creation (QEMU)",
                                    arches=CONVERTING, why="KVM_MEMORY_ATTRIBUTE_PRIVATE needs a VM type with "
                                    "private memory")
    profile: str = option(Choice(tuple(PROFILES)), "rfc-v2",
                          doc="kernel profile the run models unless --profile names one (gmemlab profiles)")
    flow: str = option(Choice(("auto", "in-place", "per-vm")), "auto",
                       doc="how the VMM converts (--flow): in-place (one copy, KVM_SET_MEMORY_ATTRIBUTES2 or the "
                       "RFC's ioctls), per-vm (two copies, KVM_SET_MEMORY_ATTRIBUTES + discard), auto: the kernel's")
    zero_on_convert: bool = option(Bool(), True, doc="false for pKVM (§1.4)", arches=CONVERTING,
                                   why="a non-CoCo guest converts nothing")
    no_direct_map: bool = option(Bool(), False, doc="GUEST_MEMFD_FLAG_NO_DIRECT_MAP: folios leave the kernel's "
                                 "direct map (secret hiding)")
    runtime_s: int = option(Number(integer=True, min=0), 60, doc="simulated runtime seconds")
    teardown: bool = option(Bool(), True, doc="close and truncate the file at the end (counted in the totals)")
    backing: Backing = field(default_factory=Backing, metadata=nested(Backing))
    gmem_flags: GmemFlags = field(default_factory=GmemFlags, metadata=nested(GmemFlags))
    populate: PopulateSpec = field(default_factory=PopulateSpec, metadata=nested(PopulateSpec))
    accept: AcceptSpec = field(default_factory=AcceptSpec, metadata=nested(
        AcceptSpec, arches=ACCEPTING, why="only SNP and TDX guests accept memory: EFI unaccepted memory, "
        "accept_memory; pKVM donates pages on first fault"))
    shared_regions: tuple[SharedRegion, ...] = option(TableOf(SharedRegion), (), arches=CONVERTING,
                                                      why="a non-CoCo guest has no private memory to share from")
    runtime_churn: Churn = field(default_factory=Churn, metadata=nested(
        Churn, arches=CONVERTING, why="runtime conversions need private memory"))
    guest_touch: GuestTouch = field(default_factory=GuestTouch, metadata=nested(GuestTouch))
    host_access: HostAccess = field(default_factory=HostAccess, metadata=nested(HostAccess))
    arch_limits: ArchLimits = field(default_factory=ArchLimits, metadata=nested(ArchLimits))
    expect: tuple[tuple[str, str], ...] = option(StrMap(), (), doc="policy = what workloads.md expects it to show "
                                                 "(text, shown by describe)")
    source: str = ""

    # --- resolved values ---------------------------------------------------------------------------

    def region_size(self, region: SharedRegion) -> int:
        """The region's size: the scenario's, or its rule's (e.g. the swiotlb rule for this RAM)."""
        if region.size is not None:
            return region.size
        rule = region.kind.size
        return rule(self) if rule is not None else PAGE_SIZE

    def region_count(self, region: SharedRegion) -> int:
        if region.count is None:
            return region.kind.count(self)
        return self.vcpus if region.count == "vcpus" else int(region.count)

    def region_align(self, region: SharedRegion) -> int:
        return region.align if region.align is not None else region.kind.align

    @property
    def private_max_level(self) -> int:
        """``arch_limits.private_max_level`` with ``auto`` resolved for the arch (:data:`ARCH_MAX_LEVEL`)."""
        limit = self.arch_limits.private_max_level
        return ARCH_MAX_LEVEL[self.arch] if limit is None else limit

    @property
    def low_top(self) -> int:
        """RAM below 4 GiB on q35 (:func:`gmemlab.workload.derived.q35_low_top`)."""
        return derived.q35_low_top(self.guest_mem)

    def accept_plan(self) -> derived.AcceptPlan:
        """Acceptance amounts for this RAM (docs/placement.md §1): scale with ``--set guest_mem=...``."""
        acc = self.accept
        mem = self.guest_mem
        if acc.mode == "none":
            return derived.AcceptPlan(acc.chunk, 0, 0, 0, 0)
        total = acc.accepted_eventually.resolve(mem)
        firmware = mem if acc.firmware == "all" else self.low_top
        if acc.mode == "eager":
            return derived.AcceptPlan(acc.chunk, firmware, 0, 0, mem)
        storm = acc.pre_watermark.fixed + acc.pre_watermark.per_vcpu * self.vcpus
        storm = storm - storm % acc.chunk
        normal = mem - self.low_top
        boot = acc.used_at_boot.resolve(mem) + derived.wmark_promo(mem, normal)
        boot = -(-boot // acc.chunk) * acc.chunk
        return derived.AcceptPlan(acc.chunk, firmware, storm, boot, max(total, firmware))


def _check(sc: Scenario) -> list[tuple[str, str]]:
    """Cross-field rules; returns (key path, reason) pairs."""
    problems: list[tuple[str, str]] = []
    page = sc.backing.page
    allowed = {"buddy": (PAGE_SIZE,), "buddy_thp": (2 * MiB,), "hugetlb": (2 * MiB, GiB)}[sc.backing.allocator]
    if page not in allowed:
        problems.append(("backing.page", f"{sc.backing.allocator} folios are "
                         f"{' or '.join(format_size(p) for p in allowed)}, got {format_size(page)}"))
    elif sc.guest_mem % page:
        problems.append(("guest_mem", f"{format_size(sc.guest_mem)} is not a multiple of the "
                         f"{format_size(page)} backing page"))
    acc = sc.accept
    if acc.chunk % acc.unit:
        problems.append(("accept.chunk", f"must be a multiple of accept.unit ({format_size(acc.unit)})"))
    if acc.mode != "none" and sc.arch in ("none", "pkvm"):
        problems.append(("accept.mode", f"arch {sc.arch} has no memory acceptance; use \"none\""))
    if sc.arch == "none" and sc.shared_regions:
        problems.append(("shared_regions", "arch none has no private memory to convert; leave it empty"))
    if sc.arch == "none" and sc.set_attr_private:
        problems.append(("set_attr_private", "arch none has no private memory (the VM type offers no "
                         "KVM_MEMORY_ATTRIBUTE_PRIVATE); use false"))
    for key in ("psc_entry_size", "pvalidate_size"):  # PSC entries and PVALIDATE have a 4K/2M size bit only
        if getattr(acc, key) > 2 * MiB:
            problems.append((f"accept.{key}", f"SNP page sizes are 4K or 2M, got {format_size(getattr(acc, key))}"))
    if sc.arch == "none" and sc.runtime_churn.rate_per_s:
        problems.append(("runtime_churn.rate_per_s", "arch none has no conversions; use 0"))
    for region in sc.shared_regions:
        path = f"shared_regions.{region.name}"
        align = sc.region_align(region)
        if align & (align - 1):
            problems.append((f"{path}.align", f"must be a power of two, got {format_size(align)}"))
        if region.protocol == "msr" and sc.arch != "snp":
            problems.append((f"{path}.protocol", "the GHCB MSR protocol exists only on snp"))
        if sc.arch not in region.kind.arches:
            problems.append((f"{path}.rule", f"{region.rule} regions exist on {', '.join(region.kind.arches)}, "
                             f"not on arch {sc.arch}"))
        elif region.kind.size is None and region.size is None:
            problems.append((f"{path}.size", f"a {region.rule} region needs an explicit size"))
        elif sc.region_size(region) * sc.region_count(region) > sc.guest_mem and region.ram and \
                region.rule != "swiotlb":  # the swiotlb halves until it fits (swiotlb_init_remap)
            problems.append((f"{path}.size", f"{sc.region_count(region)} x {format_size(sc.region_size(region))} "
                             f"exceeds guest_mem {format_size(sc.guest_mem)}"))
    for i, rng in enumerate(sc.populate.ranges):
        if rng.type != "normal" and sc.arch != "snp":
            problems.append((f"populate.ranges[{i}].type", "SNP launch page types exist only on snp"))
        if rng.measure and sc.arch != "tdx":
            problems.append((f"populate.ranges[{i}].measure", "TDH.MR.EXTEND exists only on tdx"))
    payload = sum(rng.size for rng in sc.populate.ranges)
    if payload > sc.guest_mem // 2:
        problems.append(("populate.ranges", f"{format_size(payload)} of payload is more than half of "
                         f"guest_mem {format_size(sc.guest_mem)}"))
    if sc.populate.ranges and sc.populate.method == "none":
        problems.append(("populate.method", "ranges are given but method is \"none\""))
    if sc.host_access.pattern == "pool" and not any(r.pool for r in sc.shared_regions):
        problems.append(("host_access.pattern", "\"pool\" needs a shared region with pool = true"))
    limit = sc.arch_limits.private_max_level
    if limit is not None and limit > ARCH_MAX_LEVEL[sc.arch]:
        why = {"snp": "SNP private mappings are at most 2M: the RMP has no 1G entries and KVM maps no larger than "
               "the RMP entry (sev_gmem_max_mapping_level)",
               "tdx": "TDX private leaves are 4K (upstream) or 2M (Yan Zhao's huge-page series v3 has no 1G)"}
        problems.append(("arch_limits.private_max_level", f"{why[sc.arch]}; use 4K, 2M or auto"))
    reported = {path for path, _ in problems}
    problems += [(path, reason) for path, reason in arch_problems(sc) if path not in reported]
    return problems


def _default(fld: dataclasses.Field[Any]) -> Any:
    if fld.default is not dataclasses.MISSING:
        return fld.default
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return dataclasses.MISSING


def arch_rule(fld: dataclasses.Field[Any], inherited: tuple[tuple[str, ...], str] | None
              ) -> tuple[tuple[str, ...], str] | None:
    """(arches, why) of a schema field: its own ``option(arches=...)``, else its table's (``inherited``)."""
    meta = fld.metadata
    return (meta["arches"], meta["why"]) if "arches" in meta else inherited


def key_arches(cls: type | None = None, prefix: str = "", inherited: tuple[tuple[str, ...], str] | None = None
               ) -> Iterator[tuple[str, tuple[str, ...], str]]:
    """(key, arches where it acts, why only there) for every leaf key of the schema, named as
    :mod:`gmemlab.workload.reference` names them (``shared_regions.NAME.granule``, ``populate.ranges[N].type``);
    every arch and ``""`` for keys that act everywhere. A table limited to some arches limits its keys."""
    for fld in dataclasses.fields(cls or Scenario):
        spec = fld.metadata.get("spec")
        if spec is None:
            continue
        rule = arch_rule(fld, inherited)
        key = prefix + fld.name
        if isinstance(spec, Nested):
            yield from key_arches(spec.cls, key + ".", rule)
        elif isinstance(spec, TableOf):
            yield from key_arches(spec.cls, key + ".NAME.", rule)
        elif isinstance(spec, ArrayOf):
            yield from key_arches(spec.cls, key + "[N].", rule)
        else:
            yield key, rule[0] if rule else ARCHES, rule[1] if rule else ""


def arch_problems(sc: Scenario) -> list[tuple[str, str]]:
    """Keys set away from their default on an arch where they act on nothing (simulator issue item 2, every
    knob real): (key path, one-line reason naming the arches that have the choice and why)."""
    problems: list[tuple[str, str]] = []

    def walk(obj: Any, prefix: str, inherited: tuple[tuple[str, ...], str] | None) -> None:
        for fld in dataclasses.fields(obj):
            spec = fld.metadata.get("spec")
            if spec is None:
                continue
            rule = arch_rule(fld, inherited)
            value, path = getattr(obj, fld.name), prefix + fld.name
            if isinstance(spec, Nested):  # a table's keys are named one by one
                walk(value, path + ".", rule)
            elif rule is not None and sc.arch not in rule[0] and value != _default(fld):
                names = "/".join(ARCH_NAMES[a] for a in rule[0])
                problems.append((path, f"{names}-only: {rule[1]}; arch {sc.arch} has no such choice (leave it at "
                                 "its default)"))
            elif isinstance(spec, TableOf):
                for item in value:
                    walk(item, f"{path}.{item.name}.", rule)
            elif isinstance(spec, ArrayOf):
                for i, item in enumerate(value):
                    walk(item, f"{path}[{i}].", rule)

    walk(sc, "", None)
    return problems


# --- loading --------------------------------------------------------------------------------------


def builtin_names() -> list[str]:
    """Names of the scenarios shipped in ``gmemlab/scenarios``."""
    folder = resources.files("gmemlab") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read(name_or_path: str) -> tuple[str, str, str]:
    """(source label, default name, text) for a built-in name or a file path."""
    if name_or_path in builtin_names():
        res = resources.files("gmemlab") / "scenarios" / f"{name_or_path}.toml"
        return str(res), name_or_path, res.read_text(encoding="utf-8")
    path = Path(name_or_path)
    if path.is_file():
        try:
            return str(path), path.stem, path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(str(path), "", f"cannot read: {exc}") from None
    if path.exists():  # a folder, a device: say what it is rather than "no such file"
        raise fail(name_or_path, "", f"is {'a folder' if path.is_dir() else 'not a regular file'}, not a scenario "
                   "file (a TOML file or a built-in name)")
    hint = did_you_mean(name_or_path, builtin_names())
    raise fail(name_or_path, "", f"no built-in scenario or file by that name{hint}")


def parse_override(text: str) -> tuple[str, Any]:
    """``"accept.mode=eager"`` -> ("accept.mode", "eager"); the value is TOML if it parses."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise fail(f"--set {text}", "", "expected KEY=VALUE with a dotted key, e.g. accept.mode=eager")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def apply_override(raw: dict[str, Any], text: str) -> None:
    """Check one ``--set`` against the schema and write it into the raw table."""
    key, value = parse_override(text)
    source = f"--set {text}"
    spec = spec_at(Scenario, key, source)
    try:
        spec.parse(value, key, source)
    except ValueError as exc:
        raise fail(source, key, str(exc)) from None
    parts = key.split(".")
    table = raw
    for i, part in enumerate(parts[:-1]):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise fail(source, ".".join(parts[: i + 1]), "is not a table in the scenario file")
    table[parts[-1]] = value


def parse_scenario(text: str, source: str, default_name: str = "", overrides: Sequence[str] = ()) -> Scenario:
    """Validate scenario TOML ``text`` (from ``source``) with ``--set`` overrides applied."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail(source, "", f"invalid TOML: {exc}") from None
    for override in overrides:
        apply_override(raw, override)
    label = f"{source} (with {', '.join('--set ' + o for o in overrides)})" if overrides else source
    sc: Scenario = build(Scenario, raw, "", label, source=source)
    if not sc.name:
        sc = replace(sc, name=default_name)
    sc = replace(sc, shared_regions=tuple(
        r if r.rule else replace(r, rule=r.name if r.name in RULES else "custom") for r in sc.shared_regions))
    problems = _check(sc)
    if problems:
        path, reason = problems[0]
        raise fail(label, path, reason)
    return sc


def load_scenario(name_or_path: str, overrides: Sequence[str] = ()) -> Scenario:
    """A built-in scenario by name, or a TOML file by path, validated, with ``--set`` overrides."""
    source, default_name, text = _read(name_or_path)
    return parse_scenario(text, source, default_name, overrides)
