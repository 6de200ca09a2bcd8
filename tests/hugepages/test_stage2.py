"""Stage-2 level selection (workloads.md 2.1): hardware cap, max_order, lpage_info, dirty logging, vendors;
preparedness modes (3.7)."""

from __future__ import annotations

from dataclasses import replace

from gmemlab.level import Level
from gmemlab.model.mmu import disallow_lpage, kvm_mmu_max_mapping_level
from gmemlab.uapi import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEMORY_ATTRIBUTE_PRIVATE, VmType

from .helpers import G1, GPA, M2, P, make


def _levels(env) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return env.metrics()["stage2_mapped_bytes"]


def test_hardware_cap_limits_to_2m() -> None:
    e = make("eager", nblocks=1, init_private=True, tdp_max_level=Level.PG_2M)
    e.cpu.touch(GPA, G1)
    assert _levels(e) == {"4K": 0, "2M": G1, "1G": 0}


def test_memslot_head_and_tail_and_offset_misalignment() -> None:
    # A slot starting 2 MiB into a 1G-aligned gfn range: head and tail 1G pages are disallowed at 1G.
    e = make("eager", nblocks=2, init_private=True, gpa=GPA + M2)
    slot = e.vm.find_memslot((GPA + M2) >> 12)
    assert disallow_lpage(e.vm, slot, (GPA + M2) >> 12, Level.PG_1G) is not None
    e.cpu.touch(GPA + M2, 2 * G1)
    # gfn and gmem offset misaligned modulo 1G (by 2M) -> the whole slot maps at most 2M
    assert _levels(e) == {"4K": 0, "2M": 2 * G1, "1G": 0}
    assert "offset" in disallow_lpage(e.vm, slot, (GPA + G1) >> 12, Level.PG_1G)


def test_mixed_vm_attributes_disallow_huge_leaves() -> None:
    # HUGETLB without SUPPORT_SHARED: private-ness comes from the VM attributes, so the mixed flag counts.
    from gmemlab.model import HostConfig, ModelBackend
    from gmemlab.uapi import GUESTMEM_HUGETLB_FLAG_1GB, KVM_MEM_GUEST_MEMFD

    b = ModelBackend("rfc-v2", HostConfig.upstream())
    vm = b.create_vm(int(VmType.SW_PROTECTED))
    g = vm.create_guest_memfd(G1, 4 | GUESTMEM_HUGETLB_FLAG_1GB)
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, GPA, G1, guest_memfd=g, guest_memfd_offset=0)
    vm.set_memory_attributes(GPA, G1, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    vm.set_memory_attributes(GPA + 3 * M2, P, 0)
    slot = vm.find_memslot(GPA >> 12)
    assert disallow_lpage(vm, slot, GPA >> 12, Level.PG_1G) == "mixed attributes"
    assert disallow_lpage(vm, slot, GPA >> 12, Level.PG_2M) is None
    cpu = vm.create_vcpu(0)
    cpu.touch(GPA, 3 * M2)  # the shared page itself has no host mapping to come from: skip it
    cpu.touch(GPA + 3 * M2 + P, G1 - 3 * M2 - P)
    assert vm.stage2.mapped_bytes() == {"4K": M2 - P, "2M": G1 - M2, "1G": 0}
    b.check_invariants()


def test_dirty_logging_forces_4k() -> None:
    e = make("eager", nblocks=1, init_private=True)
    slot = e.vm.find_memslot(GPA >> 12)
    logged = replace(slot, flags=slot.flags | KVM_MEM_LOG_DIRTY_PAGES)
    assert kvm_mmu_max_mapping_level(e.vm, slot, GPA >> 12, True, 18) == Level.PG_1G
    assert kvm_mmu_max_mapping_level(e.vm, logged, GPA >> 12, True, 18) == Level.PG_4K


def test_snp_caps_at_2m_and_rmp_history_sticks() -> None:
    e = make("eager", nblocks=1, init_private=True, vm_type=VmType.SNP)
    e.cpu.touch(GPA, 4 * M2)
    assert _levels(e)["2M"] == 4 * M2 and e.metrics()["arch"]["rmpupdate_2m"] == 4
    # a shared 4K inside the first 2M RMP entry: PSMASH, then the rest of that 2M stays 4K
    e.gmem.convert(5 * P, P, True)
    assert e.metrics()["arch"]["psmash"] == 1
    e.gmem.convert(5 * P, P, False)  # merged again (eager), but the RMP entries stay 4K
    e.cpu.touch(GPA, 4 * M2)
    assert _levels(e) == {"4K": M2, "2M": 3 * M2, "1G": 0}
    e.backend.check_invariants()


def test_snp_4k_mapping_inside_a_2m_rmp_entry_psmashes_and_zaps() -> None:
    e = make("deferred", nblocks=1, init_private=True, vm_type=VmType.SNP)
    e.cpu.touch(GPA, M2)
    assert _levels(e)["2M"] == M2
    e.gmem.convert(M2 - P, P, True)  # the 2M range is now mixed: a later fault must map 4K
    e.cpu.touch(GPA, M2)
    m = e.metrics()
    assert m["arch"]["psmash"] >= 1 and _levels(e)["4K"] == M2


def test_tdx_rfc_2m_upstream_4k_and_never_promoted() -> None:
    up = make("eager", nblocks=1, init_private=True, vm_type=VmType.TDX, tdx_huge_private=False)
    up.cpu.touch(GPA, 4 * M2)
    assert _levels(up) == {"4K": 4 * M2, "2M": 0, "1G": 0}
    e = make("eager", nblocks=1, init_private=True, vm_type=VmType.TDX)
    e.cpu.touch(GPA, 4 * M2)
    assert _levels(e) == {"4K": 0, "2M": 4 * M2, "1G": 0}
    e.gmem.convert(5 * P, P, True)
    e.gmem.convert(5 * P, P, False)
    e.cpu.touch(GPA, 4 * M2)
    assert _levels(e) == {"4K": M2, "2M": 3 * M2, "1G": 0}
    assert e.metrics()["arch"]["tdx_demote"] >= 1


def test_zap_of_part_of_a_huge_leaf_removes_the_leaf() -> None:
    e = make("deferred", nblocks=1, init_private=True)
    e.cpu.touch(GPA, G1)
    assert _levels(e)["1G"] == G1
    e.gmem.convert(G1 - P, P, True)
    assert _levels(e)["1G"] == 0 and e.metrics()["zaps"] >= 1


def test_preparedness_modes_zero_differently() -> None:
    out = {}
    for mode in ("folio", "per-4k", "guest-prepared"):
        e = make("deferred", ps=M2, nblocks=1, gmem_prepare=mode)
        e.mapping.write(0, b"h")  # deferred: the host maps the whole 2M folio and zeroes it
        e.gmem.convert(P, P, False)
        e.cpu.write(GPA + P, b"g")
        out[mode] = e.metrics()
        assert e.mapping.read(0, 1) == b"h"
    assert out["folio"]["bytes_zeroed"] == M2  # the host zeroed the folio; nothing more for the guest
    assert out["guest-prepared"]["arch"].get("shareability_write_locks") == 1
    assert out["per-4k"]["arch_prepares"] == 1


def test_folio_uptodate_zeroes_the_whole_folio_on_first_guest_use() -> None:
    e = make("eager", ps=M2, nblocks=1, init_private=True, gmem_prepare="folio")
    e.cpu.write(GPA + P, b"g")
    assert e.metrics()["bytes_zeroed"] == M2
    p = make("eager", ps=M2, nblocks=1, init_private=True, gmem_prepare="per-4k")
    p.cpu.write(GPA + P, b"g")
    assert p.metrics()["bytes_zeroed"] == M2  # the whole folio is mapped, so all of it is prepared
