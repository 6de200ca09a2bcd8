"""Event generators against the lifecycles of workloads.md §1 and the counts of §6 worked by hand."""

from __future__ import annotations

import itertools
import tracemalloc
from collections import Counter

import pytest

from gmemlab.arch import generate
from gmemlab.arch.snp import psc_descriptors
from gmemlab.level import Level
from gmemlab.workload import events as ev
from gmemlab.workload.derived import swiotlb_default_size
from gmemlab.workload.scenario import load_scenario
from gmemlab.workload.units import GiB, KiB, MiB, TiB

from .conftest import by_type, directed, events
from .test_scenario import BUILTINS

# Reduced sizes: dpdk's 4 GiB 1G-aligned pool needs a smaller pool in a 1 GiB guest.
REDUCED = {name: ["guest_mem=1GiB"] for name in BUILTINS}
REDUCED["dpdk-shared-buffers-64g"] += ["shared_regions.swiotlb.size=256MiB", "shared_regions.swiotlb.align=2MiB"]
NO_CHURN = "runtime_churn.rate_per_s=0"


def in_ram(event, mem):
    return isinstance(event, ev.Range) and event.end <= mem


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_runs_at_reduced_size(name):
    sc = load_scenario(name, REDUCED[name])
    stream = list(ev.expand(generate(sc, seed=1)))
    phases = [e.phase for e in stream if isinstance(e, ev.PhaseMark)]
    expected = [p for p in ev.Phase if p != ev.Phase.SMP or sc.accept.mode == "eager"]
    assert phases == (expected if sc.teardown else expected[: len(phases)])
    assert isinstance(stream[1], ev.CreateGmem) and stream[1].size == GiB
    for event in stream:
        outside = isinstance(event, ev.HcMapGpa | ev.MapGpa | ev.MmioGuardMap | ev.Psc)
        if isinstance(event, ev.Range) and not outside and not getattr(event, "rom", False):
            assert event.end <= GiB, event
    if sc.teardown:
        assert stream[-1] == ev.Punch(0, GiB)
    ticks = [e.second for e in stream if isinstance(e, ev.Tick)]
    assert ticks == list(range(sc.runtime_s))


# --- §6: acceptance ----------------------------------------------------------------------------------


def _phase_index(stream, phase):
    return next(i for i, e in enumerate(stream) if isinstance(e, ev.PhaseMark) and e.phase == phase)


def _assert_disjoint_cover(ranges, total):
    ranges = sorted(ranges)
    pos = 0
    for start, end in ranges:
        assert start == pos, f"gap or overlap at {pos:#x}: next range starts at {start:#x}"
        pos = end
    assert pos == total


def test_tdx_64g_acceptance_covers_ram_once_in_linux_order():
    """docs/placement.md §1: OVMF accepts the RAM below 4 GiB (q35: 2 GiB) in 32 MiB chunks, 2M then 4K, except
    the PAGE.ADD pages; the kernel accepts the memblock top block first, then 4 MiB steps upward from
    4 GiB (the first one takes the guard unit too); everything exactly once."""
    sc = load_scenario("tdx-boot-64g", [NO_CHURN])
    stream = list(ev.expand(generate(sc, 0)))
    boot = _phase_index(stream, ev.Phase.BOOT)
    accepts = [(i, e) for i, e in enumerate(stream) if isinstance(e, ev.Accept)]
    firmware = [e for i, e in accepts if i < boot]
    kernel = [e for i, e in accepts if i > boot]
    payload = [(p.start, p.end) for p in stream if isinstance(p, ev.Populate) and not p.rom]
    assert sum(e - s for s, e in payload) == 104 * KiB  # TDVF TEMP_MEM + TD_HOB in RAM
    assert all(e.end <= 2 * GiB and e.size <= 32 * MiB and e.try_levels == (Level.PG_2M, Level.PG_4K) for e in firmware)
    assert sum(e.size for e in firmware) == 2 * GiB - 104 * KiB
    top = kernel[0]
    assert (top.end, top.size) == (64 * GiB, 1064 * MiB)  # 1 GiB memmap + 16 x 512 KiB per-CPU + 32 MiB
    assert (kernel[1].start, kernel[1].size) == (2 * GiB, 6 * MiB)  # the first lazy step and its guard unit
    _assert_disjoint_cover([(e.start, e.end) for e in firmware + kernel] + payload, 64 * GiB)


def test_snp_64g_acceptance_psc_exits_and_pvalidates():
    """The kernel's lazy steps are one PSC of 2 x 2M, one merged exit and 2 PVALIDATEs at 2M each; every
    page of RAM is validated once, but the LAUNCH_UPDATE pages and .bss..decrypted's unused tail twice."""
    stream = events("snp-lazy-accept-64g", [NO_CHURN])
    boot = _phase_index(stream, ev.Phase.BOOT)
    steps = [e for e in directed(stream[boot:], ev.Psc, to_shared=False) if e.entries == 2]
    assert len(steps) > 15_000
    assert all(len(p.runs) == 1 and p.runs[0].page_size == 2 * MiB for p in steps)
    exits = [e for e in directed(stream[boot:], ev.HcMapGpa, to_shared=False) if e.size == 4 * MiB]
    assert len(exits) >= len(steps)
    validated = sum(p.pages for p in stream if isinstance(p, ev.Pvalidate) and p.validate)
    rescinded = sum(p.pages for p in stream if isinstance(p, ev.Pvalidate) and not p.validate)
    in_ram_payload = 31  # 124 KiB of the sev-utils#17 trace is RAM, OVMF's 4 MiB is the flash
    bss_tail = 512 - 3  # .bss..decrypted keeps 12 KiB shared, the rest is validated again at free_initmem
    assert validated == 16_777_216 - in_ram_payload + bss_tail
    sc = load_scenario("snp-lazy-accept-64g")
    assert rescinded == sum(sc.region_size(r) * sc.region_count(r) for r in sc.shared_regions) // 4096


def test_lazy_accept_boot_and_runtime_split():
    sc = load_scenario("tdx-boot-64g", [NO_CHURN])
    stream = list(ev.expand(generate(sc, 0)))
    boot, runtime = _phase_index(stream, ev.Phase.BOOT), _phase_index(stream, ev.Phase.RUNTIME)
    plan = sc.accept_plan()
    at_boot = sum(e.size for e in stream[boot:runtime] if isinstance(e, ev.Accept))
    # the top block, the pre-watermark storm and what the boot uses + the promo watermark (+ guard units)
    assert 1064 * MiB + plan.storm + plan.boot <= at_boot <= 1064 * MiB + plan.storm + plan.boot + 64 * MiB
    eager = events("snp-eager-accept-64g", [NO_CHURN, "guest_mem=4GiB"])
    smp, runtime = _phase_index(eager, ev.Phase.SMP), _phase_index(eager, ev.Phase.RUNTIME)
    assert eager[smp].cpus == 16  # deferred struct-page init workers accept in parallel (docs/placement.md A9)
    assert not any(isinstance(e, ev.Psc) and e.entries == 2 for e in eager[runtime:])
    assert len(directed(eager[smp:runtime], ev.Psc, to_shared=False)) > 400


# --- §6: swiotlb -------------------------------------------------------------------------------------


def test_swiotlb_size_rule():
    assert swiotlb_default_size(64 * GiB) == GiB  # min(max(3.84 GiB, 64 MiB), 1 GiB)
    assert swiotlb_default_size(1 * GiB) == 64 * MiB  # 61.44 MiB raised to the 64 MiB floor
    assert swiotlb_default_size(512 * MiB) == 64 * MiB
    assert swiotlb_default_size(1 * TiB) == GiB
    # 6% of 16 GiB = 983 MiB, then a power of two (round_up_default_nslabs, docs/placement.md §2): 1 GiB
    assert swiotlb_default_size(16 * GiB) == GiB
    assert swiotlb_default_size(4 * GiB) == 256 * MiB  # "SWIOTLB bounce buffer size roundup to 256MB"


def swiotlb_mapgpa(stream, mem):
    return [e for e in directed(stream, ev.MapGpa, to_shared=True) if e.end <= mem and e.size >= 64 * MiB]


def test_tdx_swiotlb_is_512_mapgpa_exits():
    stream = events("tdx-boot-64g", [NO_CHURN])
    (swiotlb,) = swiotlb_mapgpa(stream, 64 * GiB)
    assert swiotlb.size == GiB
    i = stream.index(swiotlb)
    exits = [e for e in stream[i:i + 2000] if isinstance(e, ev.HcMapGpa) and swiotlb.start <= e.start < swiotlb.end]
    assert len(exits) == 512 and all(e.size == 2 * MiB for e in exits)
    converts = [e for e in stream if isinstance(e, ev.GmemConvert) and swiotlb.start <= e.start < swiotlb.end]
    assert len(converts) == 512
    # the MMIO hole: MapGPA(shared) above RAM, 512 exits, no conversion by the VMM (not RAM)
    (hole,) = [e for e in stream if isinstance(e, ev.MapGpa) and e.start >= 64 * GiB]
    assert sum(1 for e in stream if isinstance(e, ev.HcMapGpa) and e.start >= 64 * GiB) == 512
    assert not any(isinstance(e, ev.GmemConvert | ev.SetAttr) and e.start >= hole.start for e in stream)


def test_small_guest_gets_the_64mib_floor():
    stream = events("tdx-boot-64g", [NO_CHURN, "guest_mem=1GiB"])
    (swiotlb,) = swiotlb_mapgpa(stream, GiB)
    assert swiotlb.size == 64 * MiB
    assert sum(1 for e in stream if isinstance(e, ev.HcMapGpa) and swiotlb.start <= e.start < swiotlb.end) == 32


SWIOTLB_ONLY = """
arch = "snp"
guest_mem = "64GiB"
runtime_s = 0
[accept]
mode = "lazy"
used_at_boot = "4GiB"
[shared_regions.swiotlb]
size = "auto"
align = "{align}"
"""


def swiotlb_psc(scenario_file, align, seed=0):
    sc = load_scenario(scenario_file(SWIOTLB_ONLY.format(align=align)))
    stream = list(ev.expand(generate(sc, seed)))
    pscs = directed(stream, ev.Psc, to_shared=True)
    exits = directed(stream, ev.HcMapGpa, to_shared=True)
    runs = [run for p in pscs for run in p.runs]
    e2m = sum(r.entries for r in runs if r.page_size == 2 * MiB)
    e4k = sum(r.entries for r in runs if r.page_size == 4 * KiB)
    return stream, pscs, exits, e2m, e4k


def test_snp_swiotlb_psc_aligned(scenario_file):
    stream, pscs, exits, e2m, e4k = swiotlb_psc(scenario_file, "2MiB")
    assert (e2m, e4k) == (512, 0)  # 1 GiB / 2 MiB entries
    assert len(pscs) == 8 and all(p.entries == 64 for p in pscs)  # batched 64 per VMGEXIT
    assert len(exits) == 8 and all(e.size == 128 * MiB for e in exits)
    # PVALIDATE(rescind) comes before each VMGEXIT when going private -> shared
    for psc in pscs:
        before = stream[stream.index(psc) - 1]
        assert isinstance(before, ev.Pvalidate) and not before.validate


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snp_swiotlb_psc_unaligned(scenario_file, seed):
    _, pscs, exits, e2m, e4k = swiotlb_psc(scenario_file, "4KiB", seed)
    assert (e2m, e4k) == (511, 512)  # head + tail 4K entries at the edges (<= 1,023)
    assert len(pscs) == 16  # ceil(1,023 / 64)
    assert 16 <= len(exits) <= 18  # one per run: a descriptor holding both sizes makes two
    assert sum(e.size for e in exits) == GiB


def test_psc_descriptor_runs_merge_adjacent_4k():
    (runs,) = psc_descriptors(0x1FF000, 0x1FF000 + 64 * KiB)  # crosses a 2M boundary, all 4K
    assert runs == (ev.PscRun(0x1FF000, 0x20F000, 4 * KiB),)
    (runs,) = psc_descriptors(0, 4 * MiB)
    assert runs == (ev.PscRun(0, 4 * MiB, 2 * MiB),)
    descriptors = list(psc_descriptors(0, 4 * MiB, use_2m=False))
    assert len(descriptors) == 16 and all(d == (ev.PscRun(d[0].start, d[0].start + 256 * KiB, 4 * KiB),)
                                          for d in descriptors)


def test_snp_msr_protocol_and_ghcb():
    stream = events("snp-lazy-accept-64g", [NO_CHURN, "guest_mem=2GiB"])
    single = [e for e in directed(stream, ev.Psc, to_shared=True) if e.entries == 1]
    # with the MSR protocol, one VMGEXIT per 4K page: the 2 MiB .bss..decrypted, a GHCB page and a per-CPU
    # decrypted page per vCPU; and OVMF's own GHCB page per vCPU (one-entry GHCB PSCs)
    assert len(single) == 16 + 512 + 16 + 16 and all(p.runs[0].page_size == 4 * KiB for p in single)
    for psc in single:
        assert isinstance(stream[stream.index(psc) + 1], ev.HcMapGpa)  # each its own exit


def test_pkvm_swiotlb_is_16384_share_hypercalls():
    stream = events("pkvm-android-1g", [NO_CHURN])
    shares = [e for e in stream if isinstance(e, ev.Share)]
    assert [s.hypercalls for s in shares] == [16_384]
    assert isinstance(stream[stream.index(shares[0]) + 1], ev.GmemConvert)
    (guard,) = [e for e in stream if isinstance(e, ev.MmioGuardMap)]
    assert guard.hypercalls == 64 and guard.start >= GiB
    assert not any(isinstance(e, ev.HcMapGpa) for e in stream)  # EL2 handles it: no userspace exit
    donated = [e for e in stream if isinstance(e, ev.GuestFault)]
    assert sum(d.size for d in donated[:2]) == 41 * MiB  # pvmfw + kernel/initrd/DT donated on first access


def test_set_attr_is_one_ranged_event_per_memslot():
    stream = events("attr-init-1t")
    assert [e for e in stream if isinstance(e, ev.SetAttr)] == [ev.SetAttr(0, 2 * GiB, private=True),
                                                                 ev.SetAttr(2 * GiB, TiB, private=True)]
    assert len(stream) < 10


def test_mmap_populate_flow():
    stream = events("snp-mmap-populate-64g", [NO_CHURN, "guest_mem=8GiB"])
    falloc = stream.index(ev.Falloc(0, 8 * GiB))
    first_write = next(i for i, e in enumerate(stream) if isinstance(e, ev.HostWrite))
    assert falloc < first_write
    populates = [e for e in stream if isinstance(e, ev.Populate)]
    assert len(populates) == 8 and all(p.in_place for p in populates)
    assert [p.rom for p in populates] == [True] + [False] * 7  # OVMF is in the flash, its own guest_memfd
    for pop in populates[1:]:
        i = stream.index(pop)
        assert stream[i - 2:i] == [ev.HostWrite(pop.start, pop.end), ev.GmemConvert(pop.start, pop.end, False)]
    assert not any(isinstance(e, ev.GmemConvert) and e.to_shared for e in stream[:first_write])  # file is shared
    late = events("snp-mmap-populate-64g", [NO_CHURN, "guest_mem=8GiB", "populate.convert_rest_to_private=late"])
    assert ev.GmemConvert(0, 8 * GiB, to_shared=False) in late


def test_gmem_populate_counts_and_vmsa():
    stream = events("snp-lazy-accept-64g", [NO_CHURN])
    populates = [e for e in stream if isinstance(e, ev.Populate)]
    assert sum(p.pages for p in populates) == 1055  # ~4 MiB + 124 KiB of the sev-utils#17 trace
    assert populates[0] == ev.Populate(0xFFC00000, 0x100000000, "normal", rom=True)
    assert ev.LaunchFinish(vmsa_pages=16) in stream


def test_vmm_without_in_place_conversion_sets_attr_and_punches():
    stream = events("snp-lazy-accept-64g", [NO_CHURN, "guest_mem=2GiB", "gmem_flags.mmap=false"])
    assert not any(isinstance(e, ev.GmemConvert) for e in stream)
    shared = [e for e in stream if isinstance(e, ev.SetAttr) and not e.private]
    for attr in shared:
        assert stream[stream.index(attr) + 1] == ev.Punch(attr.start, attr.end)


def test_non_coco_scattered_host_writes():
    stream = events("non-coco-mmap-64g")
    assert ev.GuestFault(0, 64 * GiB) in stream
    writes = [e for e in stream if isinstance(e, ev.HostWrite) and e.stride]
    assert len(writes) == 60  # one slice per simulated second
    assert {w.stride for w in writes} == {200 * KiB}  # 4K / 0.02
    touched = sum(w.touched_pages for w in writes)
    assert abs(touched - 0.02 * 64 * GiB / 4096) / touched < 0.01
    assert not any(isinstance(e, ev.GmemConvert | ev.SetAttr | ev.HcMapGpa) for e in stream)


def test_dpdk_pool_is_pinned_host_mapped_and_unpinned():
    stream = events("dpdk-shared-buffers-64g")
    pins = [e for e in stream if isinstance(e, ev.PinUserPages)]
    assert len(pins) == 17 and all(p.longterm for p in pins)  # swiotlb + 16 rings
    swiotlb = max(pins, key=lambda p: p.size)
    assert swiotlb.size == 4 * GiB and swiotlb.start % GiB == 0
    assert ev.HostWrite(swiotlb.start, swiotlb.end) in stream
    assert [e for e in stream if isinstance(e, ev.UnpinUserPages)] == [ev.UnpinUserPages(p.start, p.end) for p in pins]
    # about half the runtime conversions land in a 1G folio holding pool pages
    pool_folios = {a // GiB for p in pins for a in range(p.start, p.end, GiB)} | {(p.end - 1) // GiB for p in pins}
    runtime = stream.index(ev.PhaseMark(ev.Phase.RUNTIME))
    churn = [e for e in stream[runtime:] if isinstance(e, ev.GmemConvert) and e.to_shared]
    assert len(churn) == 60
    assert 10 <= sum(1 for c in churn if c.start // GiB in pool_folios) <= 50


def test_churn_pingpong_flips_one_page_in_an_otherwise_private_folio():
    stream = events("churn-pingpong")
    runtime = stream.index(ev.PhaseMark(ev.Phase.RUNTIME))
    flips = [e for e in stream[runtime:] if isinstance(e, ev.GmemConvert)]
    assert len(flips) == 2 * 100 * 10
    assert len({(f.start, f.end) for f in flips}) == 1 and flips[0].size == 4096
    assert [f.to_shared for f in flips[:4]] == [True, False, True, False]
    folio = flips[0].start // GiB
    boot_shared = [e for e in stream[:runtime] if isinstance(e, ev.GmemConvert) and e.to_shared]
    assert boot_shared and all(e.start // GiB != folio for e in boot_shared)


def test_tdx_runtime_to_private_maps_then_accepts():
    stream = events("tdx-boot-64g", ["guest_mem=2GiB"])
    runtime = stream.index(ev.PhaseMark(ev.Phase.RUNTIME))
    back = directed(stream[runtime:], ev.MapGpa, to_shared=False)
    assert len(back) == 300  # 5/s for 60 s
    where = {id(e): i for i, e in enumerate(stream)}  # equal events repeat: find them by identity
    for mapgpa in back[:20]:
        i = where[id(mapgpa)]
        nxt = stream[i + 1: i + 4]
        assert nxt[0] == ev.HcMapGpa(mapgpa.start, mapgpa.end)
        assert nxt[1] == ev.GmemConvert(mapgpa.start, mapgpa.end, False)
        assert nxt[2] == ev.Accept(mapgpa.start, mapgpa.end, (Level.PG_1G, Level.PG_2M, Level.PG_4K))


# --- determinism and scale -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["snp-lazy-accept-64g", "tdx-boot-64g", "pkvm-android-1g", "non-coco-mmap-64g"])
def test_same_seed_same_stream_other_seed_differs(name):
    sets = ["guest_mem=2GiB"] if name != "pkvm-android-1g" else []
    assert events(name, sets, seed=7) == events(name, sets, seed=7)
    assert events(name, sets, seed=7) != events(name, sets, seed=8)


def test_no_randomness_no_difference():
    assert events("attr-init-1t", seed=1) == events("attr-init-1t", seed=2)


@pytest.mark.parametrize("name", ["snp-lazy-accept-64g", "tdx-boot-64g", "snp-mmap-populate-64g",
                                  "non-coco-mmap-64g", "pkvm-android-1g"])
def test_event_count_independent_of_guest_size(name):
    """Without acceptance (whose memmap and watermarks follow RAM, as in Linux) the same scenario has the
    same events at 16 GiB and 1 TiB."""
    same = ["accept.mode=none"] if "snp" in name or "tdx" in name else []
    names = {r.name for r in load_scenario(name).shared_regions}
    if "swiotlb" in names:
        same.append("shared_regions.swiotlb.size=64MiB")
    if "atomic_pool" in names:  # 128 KiB per GiB of RAM, at most 4 MiB (dma_atomic_pool_init)
        same.append("shared_regions.atomic_pool.size=4MiB")
    small = events(name, ["guest_mem=16GiB", *same], seed=3)
    large = events(name, ["guest_mem=1TiB", *same], seed=3)
    assert len(small) == len(large)
    assert by_type(small) == by_type(large)


def test_memory_does_not_grow_with_guest_size():
    """A 1 TiB guest accepting everything (262,144 chunks) needs no more generator memory, and no more
    events, than 16 GiB: the regular lazy steps are one Repeat standing for the calls."""

    def peak(mem):
        sc = load_scenario("tdx-boot-64g", [f"guest_mem={mem}", NO_CHURN, "accept.accepted_eventually=all"])
        tracemalloc.start()
        calls: Counter[str] = Counter()
        count = 0
        for e in generate(sc, 0):
            count += 1
            calls.update(ev.tally((e,)))
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return count, sum(calls.values()), result

    count_small, calls_small, peak_small = peak("16GiB")
    count_large, calls_large, peak_large = peak("1TiB")
    assert calls_large > 40 * calls_small
    assert count_large < count_small + 16
    assert peak_large < 2 * peak_small + 64 * KiB


def test_memslots_as_qemu_splits_them():
    """QEMU: RAM below 4 GiB, then above it in slots of at most KVM_MEM_MAX_NR_PAGES host pages."""
    from gmemlab.workload.derived import KVM_SLOT_MAX_BYTES, memslots
    assert memslots(GiB) == [(0, GiB)]
    slots = memslots(16 * TiB)
    assert slots[0] == (0, 2 * GiB) and sum(s for _, s in slots) == 16 * TiB
    assert len(slots) == 3 and slots[1][1] == KVM_SLOT_MAX_BYTES and slots[2][0] % (2 * MiB)  # not 2M-aligned
    assert all(o + s == n for (o, s), (n, _) in itertools.pairwise(slots))
