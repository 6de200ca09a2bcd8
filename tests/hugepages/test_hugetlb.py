"""HugeTLB guest_memfd: creation, pool, fallocate/st_blocks, folios, policies, pins (spec 2.5, 2.14;
workloads.md 3)."""

from __future__ import annotations

import errno

import pytest

from gmemlab.conformance import cases_for, run_case
from gmemlab.errors import ConversionError, KvmError
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.model.folio import VMEMMAP_SPLIT_1G_2M, VMEMMAP_SPLIT_1G_4K, VMEMMAP_SPLIT_2M_4K
from gmemlab.model.policy import POLICIES, policy
from gmemlab.uapi import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, Cap, VmType

from .helpers import G1, GPA, HUGETLB, M2, SIZE_FLAG, SUPPORT_SHARED, P, make, splits

KEEP = FALLOC_FL_KEEP_SIZE
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


# -- creation and the pool -------------------------------------------------------------------------


def test_default_config_has_no_hugetlb_and_upstream_has_it() -> None:
    plain = ModelBackend("rfc-v2", HostConfig())
    assert plain.check_extension(Cap.GMEM_HUGETLB) == 0
    vm = plain.create_vm(0)
    with pytest.raises(KvmError) as exc:
        vm.create_guest_memfd(M2, HUGETLB)
    assert exc.value.errno == errno.EINVAL
    assert ModelBackend("rfc-v2").check_extension(Cap.GMEM_HUGETLB) == 1


@pytest.mark.parametrize(
    "size,flags,err,word",
    [
        (P, HUGETLB | SIZE_FLAG[M2], errno.EINVAL, "multiple"),
        (M2 + P, HUGETLB | SIZE_FLAG[M2], errno.EINVAL, "multiple"),
        (G1 // 2, HUGETLB | SIZE_FLAG[G1], errno.EINVAL, "multiple"),
        (M2, HUGETLB | (14 << 58), errno.EINVAL, "page-size log"),
        (M2, HUGETLB | (31 << 58), errno.EINVAL, "page-size log"),
        (8 * G1, HUGETLB | SIZE_FLAG[G1], errno.ENOMEM, "pool"),
    ],
)
def test_creation_errors_name_the_argument_and_change_nothing(size: int, flags: int, err: int, word: str) -> None:
    b = ModelBackend("rfc-v2", HostConfig.upstream().with_(hugetlb_pool_pages={M2: 4, G1: 4}))
    vm = b.create_vm(0)
    before = dict(b.hugetlb_pool.free)
    with pytest.raises(KvmError) as exc:
        vm.create_guest_memfd(size, flags)
    assert exc.value.errno == err and word in exc.value.reason
    assert b.hugetlb_pool.free == before


def test_subpool_reserves_at_creation_and_returns_at_eviction() -> None:
    b = ModelBackend("rfc-v2", HostConfig.upstream().with_(hugetlb_pool_pages={G1: 3}))
    vm = b.create_vm(0)
    g = vm.create_guest_memfd(2 * G1, HUGETLB | SIZE_FLAG[G1])
    assert b.hugetlb_pool.free[G1] == 1
    with pytest.raises(KvmError) as exc:
        vm.create_guest_memfd(2 * G1, HUGETLB | SIZE_FLAG[G1])
    assert exc.value.errno == errno.ENOMEM
    g.fallocate(KEEP, 0, 2 * G1)
    g.close()
    assert b.hugetlb_pool.free[G1] == 3


def test_close_with_pinning_returns_the_page_after_unpin() -> None:
    e = make("eager", ps=M2, nblocks=1)
    e.mapping.write(0, b"A")
    pin = e.mapping.pin(0, P)
    e.mapping.munmap()
    e.gmem.close()
    free = e.backend.hugetlb_pool.free[M2]
    assert free == e.backend.hugetlb_pool.total[M2] - 1  # still referenced by the pin
    pin.unpin()
    assert e.backend.hugetlb_pool.free[M2] == e.backend.hugetlb_pool.total[M2]


def test_fstat_and_fallocate_rounding() -> None:
    b = ModelBackend("rfc-v2")
    g = b.create_vm(0).create_guest_memfd(4 * M2, SUPPORT_SHARED | HUGETLB | SIZE_FLAG[M2])
    assert (g.fstat().st_blksize, g.fstat().st_blocks) == (M2, 0)
    g.fallocate(KEEP, P, M2)  # [4K, 2M+4K) rounds down to [0, 2M): one folio
    assert g.fstat().st_blocks == M2 // 512
    g.fallocate(KEEP, 3 * M2 + P, P)  # start and end round down to the same boundary: nothing
    assert g.fstat().st_blocks == M2 // 512
    g.fallocate(PUNCH, 0, P)  # partial: zeroed, not freed
    assert g.fstat().st_blocks == M2 // 512
    g.fallocate(PUNCH, 0, M2)
    assert g.fstat().st_blocks == 0


def test_mmap_needs_huge_alignment() -> None:
    g = ModelBackend("rfc-v2").create_vm(0).create_guest_memfd(2 * M2, SUPPORT_SHARED | HUGETLB)
    for length, offset in ((P, 0), (M2 + P, 0), (M2, P)):
        with pytest.raises(KvmError) as exc:
            g.mmap(length, offset)
        assert exc.value.errno == errno.EINVAL and "huge page size" in exc.value.reason
    g.mmap(M2, M2).munmap()


def test_unknown_policy_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="known"):
        policy("lazy")
    with pytest.raises(ValueError):
        ModelBackend("rfc-v2", HostConfig.upstream().with_(gmem_policy="nope"))


# -- eager (RFC v2) ----------------------------------------------------------------------------------


def test_eager_shared_allocation_splits_and_init_private_avoids_it() -> None:
    e = make("eager", nblocks=2)
    e.gmem.fallocate(KEEP, 0, e.size)
    m = e.metrics()
    assert m["splits"] == {"1G": 2, "2M": 0} and m["vmemmap_bytes"] == 2 * VMEMMAP_SPLIT_1G_4K
    p = make("eager", nblocks=2, init_private=True)
    p.gmem.fallocate(KEEP, 0, p.size)
    assert splits(p.metrics()) == 0
    p.cpu.touch(GPA, p.size)
    assert p.metrics()["stage2_bytes"]["1G"] == 2 * G1


def test_eager_convert_splits_and_merges() -> None:
    e = make("eager", nblocks=1, init_private=True)
    e.cpu.touch(GPA, G1)
    e.gmem.convert(5 * P, P, True)
    assert e.metrics()["splits"]["1G"] == 1
    assert e.vm.stage2.lookup((GPA >> 12) + 5) is None  # the 1G leaf went whole
    e.cpu.touch(GPA, G1)
    assert e.metrics()["stage2_mapped_bytes"] == {"4K": G1, "2M": 0, "1G": 0}
    e.gmem.convert(5 * P, P, False)
    m = e.metrics()
    assert m["merges"]["1G"] == 1 and m["vmemmap_bytes"] == 0 and m["vmemmap_peak_bytes"] == VMEMMAP_SPLIT_1G_4K
    e.cpu.touch(GPA, G1)
    assert e.vm.stage2.lookup(GPA >> 12).level == 3
    e.backend.check_invariants()


def test_eager_merge_never_keeps_the_split_until_truncate() -> None:
    e = make("eager+merge-never", nblocks=1, init_private=True)
    e.gmem.convert(0, P, True)
    e.gmem.fallocate(KEEP, 0, G1)
    e.gmem.convert(0, P, False)
    assert e.metrics()["merges"]["1G"] == 0 and e.metrics()["vmemmap_bytes"] == VMEMMAP_SPLIT_1G_4K
    e.gmem.fallocate(PUNCH, 0, G1)
    assert e.metrics()["merges"]["1G"] == 1 and e.metrics()["vmemmap_bytes"] == 0
    e.backend.check_invariants()


def test_staged_split_goes_1g_to_2m_then_only_the_touched_2m() -> None:
    e = make("eager+staged", nblocks=1, init_private=True)
    e.gmem.fallocate(KEEP, 0, G1)
    e.gmem.convert(M2 + P, P, True)
    m = e.metrics()
    assert m["splits"] == {"1G": 1, "2M": 1}
    assert m["vmemmap_bytes"] == VMEMMAP_SPLIT_1G_2M + VMEMMAP_SPLIT_2M_4K
    e.cpu.touch(GPA, G1)
    assert e.metrics()["stage2_mapped_bytes"] == {"4K": M2, "2M": G1 - M2, "1G": 0}
    e.gmem.convert(M2 + P, P, False)
    assert e.metrics()["merges"] == {"1G": 1, "2M": 1} and e.metrics()["vmemmap_bytes"] == 0
    e.backend.check_invariants()


# -- deferred (Roth) -----------------------------------------------------------------------------------


def test_deferred_keeps_folios_and_maps_by_the_record() -> None:
    e = make("deferred", nblocks=2)
    e.gmem.fallocate(KEEP, 0, e.size)
    e.gmem.convert(0, 4 * M2, False)  # lazy accept of 8 MiB in block 0
    e.cpu.touch(GPA, e.size)
    m = e.metrics()
    assert splits(m) == 0
    # block 0: 4 private 2M leaves + 508 shared 2M leaves; block 1: one shared 1G leaf
    assert m["stage2_mapped_bytes"] == {"4K": 0, "2M": G1, "1G": G1}
    e.backend.check_invariants()


def test_deferred_host_fault_splits_only_inside_mixed_ranges() -> None:
    e = make("deferred", nblocks=2)
    e.mapping.write(G1, b"x")  # block 1 all shared: one 1G host mapping, no split
    assert e.metrics()["host_map_bytes"]["1G"] == G1 and splits(e.metrics()) == 0
    e.gmem.convert(0, P, False)  # block 0 mixed at 1G and at its first 2M
    e.mapping.write(4 * M2, b"y")  # an all-shared 2M inside the mixed 1G: 1G -> 2M, 2M host mapping
    assert e.metrics()["splits"] == {"1G": 1, "2M": 0} and e.metrics()["host_map_bytes"]["2M"] == M2
    e.mapping.write(P, b"z")  # inside the mixed 2M: that 2M -> 4K
    assert e.metrics()["splits"] == {"1G": 1, "2M": 1} and e.metrics()["host_map_bytes"]["4K"] == P
    e.backend.check_invariants()
    d = make("deferred+direct", nblocks=1)
    d.gmem.convert(0, P, False)
    d.mapping.write(4 * M2, b"y")
    assert d.metrics()["splits"] == {"1G": 1, "2M": 0} and d.metrics()["host_map_bytes"]["4K"] == P


def test_deferred_guest_mapping_follows_the_record_down_to_4k() -> None:
    e = make("deferred", nblocks=1, init_private=True)
    e.gmem.convert(3 * P, P, True)
    e.cpu.touch(GPA, G1)
    assert e.metrics()["stage2_mapped_bytes"] == {"4K": M2, "2M": G1 - M2, "1G": 0}
    assert splits(e.metrics()) == 0


# -- pins and refcounts ------------------------------------------------------------------------------


def test_pin_in_intact_folio_blocks_the_whole_folio() -> None:
    e = make("deferred", nblocks=1)
    pin = e.mapping.pin(7 * M2 + 5 * P, P)  # all shared: the 1G folio stays intact
    with pytest.raises(ConversionError) as exc:
        e.gmem.convert(100 * M2, P, False)
    assert exc.value.errno == errno.EAGAIN and exc.value.error_offset == 0
    assert e.metrics()["conversions"]["eagain"] == 1
    pin.unpin()
    e.gmem.convert(100 * M2, P, False)


def test_after_a_split_only_the_pinned_4k_blocks() -> None:
    e = make("eager", nblocks=1)
    pin = e.mapping.pin(7 * M2 + 5 * P, P)
    e.gmem.convert(100 * M2, P, False)  # another 4K folio: fine
    with pytest.raises(ConversionError) as exc:
        e.gmem.convert(7 * M2, M2, False)
    assert exc.value.error_offset == 7 * M2 + 5 * P
    pin.unpin()


def test_punch_of_split_shared_pinned_block_is_eagain_and_changes_nothing() -> None:
    e = make("eager", ps=M2, nblocks=2)
    e.mapping.write(0, b"A")
    pin = e.mapping.pin(P, P)
    with pytest.raises(KvmError) as exc:
        e.gmem.fallocate(PUNCH, 0, 2 * M2)
    assert exc.value.errno == errno.EAGAIN and e.metrics()["punch_eagain"] == 1
    assert e.gmem.fstat().st_blocks == M2 // 512
    pin.unpin()
    e.gmem.fallocate(PUNCH, 0, 2 * M2)
    assert e.gmem.fstat().st_blocks == 0
    e.backend.check_invariants()


def test_conformance_cases_catch_a_model_that_ignores_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    from gmemlab.model.gmem_huge import HugeGmem

    def outcome(name: str) -> str:
        case = next(c for c in cases_for("rfc-v2") if c.name == name)
        return run_case(case, lambda p: ModelBackend(p), "model", "rfc-v2").status

    assert outcome("test_truncate_shared_while_pinned_2M") == "pass"
    monkeypatch.setattr(HugeGmem, "kvm_gmem_merge_truncate_check", lambda self, b0, b1: None)
    assert outcome("test_truncate_shared_while_pinned_2M") == "fail"
    monkeypatch.setattr(HugeGmem, "first_pinned_folio", lambda self, s, e: None)
    assert outcome("test_conversions_should_fail_if_memory_has_elevated_refcount_1G") == "fail"


# -- the metrics contract -------------------------------------------------------------------------------


def test_metrics_keys() -> None:
    m = make("eager", ps=M2, nblocks=1).metrics()
    for key in ("splits", "merges", "stage2_bytes", "host_map_bytes", "conversions", "guest_faults", "zaps",
                "tlb_flushes", "tracking", "vmemmap_bytes"):
        assert key in m
    assert set(m["splits"]) == {"1G", "2M"} and set(m["stage2_bytes"]) == {"4K", "2M", "1G"}
    assert set(m["conversions"]) == {"ok", "eagain"} and set(m["tracking"]) == {"ranges", "per_page_entries"}


def test_every_policy_is_registered_and_runs() -> None:
    for name in POLICIES:
        e = make(name, nblocks=1)
        e.gmem.convert(M2, 2 * M2, False)
        e.mapping.write(0, b"q")
        e.cpu.touch(GPA, G1)
        e.backend.check_invariants()


def test_default_private_variant_flips_the_initial_state_only() -> None:
    e = make("eager", nblocks=1, default_private=True)  # no bit 1: private
    e.gmem.fallocate(KEEP, 0, G1)
    assert splits(e.metrics()) == 0
    s = make("eager", nblocks=1, default_private=True, init_private=True)  # bit 1 = INIT_SHARED here
    s.mapping.write(0, b"x")
    assert s.metrics()["splits"]["1G"] == 1


def test_cost_per_event_does_not_grow_with_guest_size() -> None:
    def run(size_g: int) -> int:
        e = make("deferred", nblocks=size_g, init_private=False)
        for i in range(0, 64):
            e.gmem.convert(i * 4 * M2, 4 * M2, False)
        e.gmem.convert(3 * G1 // 2, G1, True)
        return e.metrics()["tracking"]["ranges"]

    assert run(64) == run(1024)


def test_a_vm_type_without_private_memory_shares_everything() -> None:
    e = make("deferred", nblocks=1, vm_type=VmType.DEFAULT)
    e.cpu.touch(GPA, G1)
    assert e.metrics()["stage2_mapped_bytes"]["1G"] == G1


def test_populate_allocates_the_whole_huge_folio() -> None:
    e = make("deferred", ps=M2, nblocks=2, init_private=True, vm_type=VmType.SNP)
    assert e.vm.kvm_gmem_populate(GPA >> 12, b"\x11" * P, 1) == 1
    assert e.gmem.fstat().st_blocks == M2 // 512
    assert e.cpu.read(GPA, 1) == b"\x11"
    e.gmem.fallocate(PUNCH, 0, 2 * M2)
    assert e.gmem.fstat().st_blocks == 0
    e.backend.check_invariants()


def test_invariants_catch_a_policy_that_breaks_its_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from gmemlab.model.invariants import InvariantViolation
    from gmemlab.model.policy import DeferredPolicy, EagerPolicy

    monkeypatch.setattr(EagerPolicy, "on_allocate", lambda self, hf, b0, b1: None)
    e = make("eager", ps=M2, nblocks=1)
    e.gmem.fallocate(KEEP, 0, M2)
    with pytest.raises(InvariantViolation, match="intact"):
        e.backend.check_invariants()
    monkeypatch.setattr(DeferredPolicy, "after_convert", lambda self, hf, work, to_shared: None)
    d = make("deferred", ps=M2, nblocks=1)
    d.gmem.convert(0, P, False)
    with pytest.raises(InvariantViolation, match="lpage record"):
        d.backend.check_invariants()
