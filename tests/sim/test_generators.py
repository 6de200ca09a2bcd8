"""Event generators against the lifecycles of workloads.md §1 and the counts of §6 worked by hand."""

from __future__ import annotations

import tracemalloc

import pytest

from gmemlab.arch import generate
from gmemlab.arch.snp import psc_descriptors
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
    stream = list(generate(sc, seed=1))
    phases = [e.phase for e in stream if isinstance(e, ev.PhaseMark)]
    expected = list(ev.Phase)
    assert phases == (expected if sc.teardown else expected[: len(phases)])
    assert isinstance(stream[1], ev.CreateGmem) and stream[1].size == GiB
    for event in stream:
        if isinstance(event, ev.Range) and not isinstance(event, ev.HcMapGpa | ev.MapGpa | ev.MmioGuardMap):
            assert event.end <= GiB, event
    if sc.teardown:
        assert stream[-1] == ev.Punch(0, GiB)
    ticks = [e.second for e in stream if isinstance(e, ev.Tick)]
    assert ticks == list(range(sc.runtime_s))


# --- §6: acceptance ----------------------------------------------------------------------------------


def test_tdx_64g_full_accept_is_16384_chunks_covering_ram_once():
    accepts = [e for e in events("tdx-boot-64g", [NO_CHURN]) if isinstance(e, ev.Accept)]
    assert len(accepts) == 16_384  # 64 GiB / 4 MiB
    assert all(a.size == 4 * MiB and a.try_levels == (GiB, 2 * MiB, 4 * KiB) for a in accepts)
    starts = sorted(a.start for a in accepts)
    assert starts == list(range(0, 64 * GiB, 4 * MiB))


def test_snp_64g_full_accept_psc_exits_and_pvalidates():
    stream = events("snp-lazy-accept-64g", [NO_CHURN])
    to_private_psc = directed(stream, ev.Psc, to_shared=False)
    assert len(to_private_psc) == 16_384  # one descriptor (2 x 2M) per chunk
    assert all(p.entries == 2 and len(p.runs) == 1 and p.runs[0].page_size == 2 * MiB for p in to_private_psc)
    exits = directed(stream, ev.HcMapGpa, to_shared=False)
    assert len(exits) == 16_384 and all(e.size == 4 * MiB for e in exits)  # one merged exit per chunk
    pvalidates = [e for e in stream if isinstance(e, ev.Pvalidate) and e.validate]
    assert sum(p.size // p.page_size for p in pvalidates) == 32_768  # 2 x 2M per chunk
    assert sum(p.pages for p in pvalidates) == 16_777_216  # the 4K-RMP fallback count


def test_lazy_accept_boot_and_runtime_split():
    stream = events("tdx-boot-64g", [NO_CHURN])
    runtime = stream.index(ev.PhaseMark(ev.Phase.RUNTIME))
    at_boot = [e for e in stream[:runtime] if isinstance(e, ev.Accept)]
    assert len(at_boot) == 1024  # accepted_at_boot_end 4 GiB
    eager = events("snp-eager-accept-64g", [NO_CHURN, "guest_mem=4GiB"])
    runtime = eager.index(ev.PhaseMark(ev.Phase.RUNTIME))
    assert not any(isinstance(e, ev.Psc) for e in eager[runtime:])
    assert len(directed(eager[:runtime], ev.Psc, to_shared=False)) == 1024


# --- §6: swiotlb -------------------------------------------------------------------------------------


def test_swiotlb_size_rule():
    assert swiotlb_default_size(64 * GiB) == GiB  # min(max(3.84 GiB, 64 MiB), 1 GiB)
    assert swiotlb_default_size(1 * GiB) == 64 * MiB  # 61.44 MiB raised to the 64 MiB floor
    assert swiotlb_default_size(512 * MiB) == 64 * MiB
    assert swiotlb_default_size(1 * TiB) == GiB
    # 6% of 16 GiB = 1,030,792,151 bytes, rounded up to a 256 KiB swiotlb segment: 3,933 segments
    assert swiotlb_default_size(16 * GiB) == 3933 * 256 * KiB


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
accepted_at_boot_end = "4GiB"
[shared_regions.swiotlb]
size = "auto"
location = "low"
align = "{align}"
"""


def swiotlb_psc(scenario_file, align, seed=0):
    sc = load_scenario(scenario_file(SWIOTLB_ONLY.format(align=align)))
    stream = list(generate(sc, seed))
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
    # early .bss..decrypted (16 KiB) with the MSR protocol: one VMGEXIT per 4K page; a GHCB page per vCPU
    assert len(single) == 4 + 16 and all(p.runs[0].page_size == 4 * KiB for p in single)
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


def test_set_attr_is_one_ranged_event():
    stream = events("attr-init-1t")
    assert [e for e in stream if isinstance(e, ev.SetAttr)] == [ev.SetAttr(0, TiB, private=True)]
    assert len(stream) < 10


def test_mmap_populate_flow():
    stream = events("snp-mmap-populate-64g", [NO_CHURN, "guest_mem=8GiB"])
    falloc = stream.index(ev.Falloc(0, 8 * GiB))
    first_write = next(i for i, e in enumerate(stream) if isinstance(e, ev.HostWrite))
    assert falloc < first_write
    populates = [e for e in stream if isinstance(e, ev.Populate)]
    assert len(populates) == 8 and all(p.in_place for p in populates)
    for pop in populates:
        i = stream.index(pop)
        assert stream[i - 2:i] == [ev.HostWrite(pop.start, pop.end), ev.GmemConvert(pop.start, pop.end, False)]
    assert not any(isinstance(e, ev.GmemConvert) and e.to_shared for e in stream[:first_write])  # file is shared
    late = events("snp-mmap-populate-64g", [NO_CHURN, "guest_mem=8GiB", "populate.convert_rest_to_private=late"])
    assert ev.GmemConvert(0, 8 * GiB, to_shared=False) in late


def test_gmem_populate_counts_and_vmsa():
    stream = events("snp-lazy-accept-64g", [NO_CHURN])
    populates = [e for e in stream if isinstance(e, ev.Populate)]
    assert sum(p.pages for p in populates) == 1055  # ~4 MiB + 124 KiB of the sev-utils#17 trace
    assert populates[0] == ev.Populate(0xFFC00000, 0x100000000, "normal")
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
    pins = [e for e in stream if isinstance(e, ev.Pin)]
    assert len(pins) == 17 and all(p.longterm for p in pins)  # swiotlb + 16 rings
    swiotlb = max(pins, key=lambda p: p.size)
    assert swiotlb.size == 4 * GiB and swiotlb.start % GiB == 0
    assert ev.HostWrite(swiotlb.start, swiotlb.end, want_size=GiB) in stream
    assert [e for e in stream if isinstance(e, ev.Unpin)] == [ev.Unpin(p.start, p.end) for p in pins]
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
        assert nxt[2] == ev.Accept(mapgpa.start, mapgpa.end, (GiB, 2 * MiB, 4 * KiB))


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
    same = ["accept.accepted_eventually=8GiB"] if "snp" in name or "tdx" in name else []
    if "swiotlb" in {r.name for r in load_scenario(name).shared_regions}:
        same.append("shared_regions.swiotlb.size=64MiB")
    small = events(name, ["guest_mem=16GiB", *same], seed=3)
    large = events(name, ["guest_mem=1TiB", *same], seed=3)
    assert len(small) == len(large)
    assert by_type(small) == by_type(large)


def test_memory_does_not_grow_with_guest_size():
    """A 1 TiB guest accepting everything (262,144 chunks) needs no more generator memory than 16 GiB."""

    def peak(mem):
        sc = load_scenario("tdx-boot-64g", [f"guest_mem={mem}", NO_CHURN, "accept.accepted_eventually=all"])
        tracemalloc.start()
        count = sum(1 for _ in generate(sc, 0))
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return count, result

    count_small, peak_small = peak("16GiB")
    count_large, peak_large = peak("1TiB")
    assert count_large > 40 * count_small
    assert peak_large < 2 * peak_small + 64 * KiB
