"""Model behaviour beyond the selftest checklist: populate (2.9), attributes and fault routing (2.7),
lifetimes (2.12), invalidation (2.11), ranges not pages, and the invariant checker itself."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from gmemlab.errors import KvmError, VcpuExit
from gmemlab.model import InvariantViolation, ModelBackend
from gmemlab.uapi import KVM_EXIT_MEMORY_FAULT, KVM_MEM_GUEST_MEMFD, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE

P = PAGE_SIZE
GPA = 1 << 32
GFN = GPA >> 12


def sw_protected(profile: str = "linux-6.18", flags: int = 1, npages: int = 16):  # type: ignore[no-untyped-def]
    system = ModelBackend(profile)
    vm = system.create_vm(1)
    g = vm.create_guest_memfd(npages * P, flags)
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, GPA, npages * P, userspace_addr=0, guest_memfd=g,
                               guest_memfd_offset=0)
    return system, vm, g


def test_populate_rules() -> None:
    system, vm, g = sw_protected()
    with pytest.raises(KvmError) as e:
        vm.kvm_gmem_populate(GFN, b"x" * P, 1)
    assert e.value.errno == 22 and "not private" in str(e.value)
    vm.set_memory_attributes(GPA, 4 * P, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    assert vm.kvm_gmem_populate(GFN, b"\x42" * (2 * P), 2) == 2
    with pytest.raises(KvmError) as e:
        vm.kvm_gmem_populate(GFN, b"x" * P, 1)
    assert e.value.errno == 17  # already prepared
    # partial progress returns the count; pages 2,3 private, 4 shared
    assert vm.kvm_gmem_populate(GFN + 2, None, 8) == 2
    cpu = vm.create_vcpu()
    assert cpu.read(GPA, 2) == b"\x42\x42"  # private access (attribute) reads the populated data
    with pytest.raises(KvmError) as e:
        vm.kvm_gmem_populate(GFN + 100, None, 1)
    assert e.value.errno == 22 and "not in a guest_memfd memslot" in str(e.value)
    system.check_invariants()


def test_attribute_mismatch_is_a_memory_fault_exit() -> None:
    system, vm, _ = sw_protected()
    cpu = vm.create_vcpu()
    vm.set_memory_attributes(GPA, P, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    with pytest.raises(VcpuExit) as e:
        cpu.read(GPA, 8, private=False)
    assert (e.value.exit_reason, e.value.gpa, e.value.size, e.value.flags) == (KVM_EXIT_MEMORY_FAULT, GPA, P, 0)
    with pytest.raises(VcpuExit) as e:
        cpu.read(GPA + P, 8, private=True)
    assert e.value.flags == 8  # KVM_MEMORY_EXIT_FLAG_PRIVATE


def test_private_access_without_memslot_is_memory_fault_not_mmio() -> None:
    """private_mem_kvm_exits_test (spec 3.4): deleted gmem slot + private access -> memory fault."""
    system, vm, _ = sw_protected()
    vm.set_memory_attributes(GPA, P, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    vm.set_user_memory_region2(1, 0, GPA, 0)
    with pytest.raises(VcpuExit) as e:
        vm.create_vcpu().read(GPA, 8)
    assert (e.value.exit_reason, e.value.flags, e.value.size) == (KVM_EXIT_MEMORY_FAULT, 8, P)


def test_attribute_change_zaps_stage2() -> None:
    system, vm, _ = sw_protected()
    cpu = vm.create_vcpu()
    cpu.read(GPA, 8)
    assert vm.stage2.lookup(GFN) is not None
    vm.set_memory_attributes(GPA, P, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    assert vm.stage2.lookup(GFN) is None
    vm.set_memory_attributes(GPA, P, KVM_MEMORY_ATTRIBUTE_PRIVATE)  # no-op: nothing to zap
    cpu.read(GPA, 8)
    assert vm.stage2.lookup(GFN).private
    system.check_invariants()


def test_vm_lives_while_gmem_open() -> None:
    system = ModelBackend()
    vm = system.create_vm(0)
    g = vm.create_guest_memfd(P, 3)
    vm.close()
    assert not vm.destroyed and vm in system.vms
    g.close()
    assert vm.destroyed and vm not in system.vms


def test_release_frees_memory_and_counts() -> None:
    system = ModelBackend()
    vm = system.create_vm(0)
    g = vm.create_guest_memfd(64 * P, 3)
    g.fallocate(1, 0, 64 * P)
    inode = g.inode
    assert inode.pagecache.nr_allocated == 64
    g.close()
    assert inode.pagecache.nr_allocated == 0 and system.stats["pages_freed_at_release"] == 64


def test_tdx_invalidation_filter_keeps_shared_leaves() -> None:
    """Spec 2.11: only mirrored (TDX) page tables honour the filter; private punch keeps shared leaves."""
    system = ModelBackend()
    vm = system.create_vm(5)
    g = vm.create_guest_memfd(4 * P, 1)
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, GPA, 4 * P, userspace_addr=0, guest_memfd=g,
                               guest_memfd_offset=0)
    cpu = vm.create_vcpu()
    vm.set_memory_attributes(GPA, P, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    cpu.read(GPA, 8, private=True)
    cpu.read(GPA + P, 8, private=False)
    g.fallocate(3, 0, 2 * P)
    assert vm.stage2.lookup(GFN) is None
    assert vm.stage2.lookup(GFN + 1) is not None


def test_one_tebibyte_costs_what_one_gibibyte_does() -> None:
    """Ranges, not pages: create, convert all and back, punch all on 1 TiB without walking pages."""
    tracemalloc.start()
    system = ModelBackend("rfc-v2")
    vm = system.create_vm(0)
    g = vm.create_guest_memfd(1 << 40, 1)
    t0 = time.perf_counter()
    g.convert(0, 1 << 40, False)
    g.convert(0, 1 << 40, True)
    g.fallocate(1, 0, 1 << 40)
    g.fallocate(3, 0, 1 << 40)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert g.inode.shareability.nr_ranges() == 1
    assert g.inode.pagecache.state.nr_runs() == 1
    assert peak < 4 << 20  # a page walk would need gigabytes
    assert elapsed < 5  # loose: a page walk of 2^28 indices takes minutes (speed is measured in bench/)
    system.check_invariants()


def test_invariant_checker_detects_corruption() -> None:
    system = ModelBackend("rfc-v2")
    vm = system.create_vm(0)
    g = vm.create_guest_memfd(4 * P, 1)
    m = g.mmap(4 * P)
    m.write(0, b"x")
    system.check_invariants()
    g.inode.shareability.store(0, 1, False)  # corrupt: private page still host-mapped
    with pytest.raises(InvariantViolation, match="host maps private"):
        system.check_invariants()
    g.inode.shareability.store(0, 1, True)
    g.inode.pagecache.nr_allocated += 1
    with pytest.raises(InvariantViolation, match="folios counted"):
        system.check_invariants()


def test_conversion_eagain_keeps_side_effects_and_state() -> None:
    """Spec 5.8: host PTEs are already gone when EAGAIN is returned; shareability is unchanged."""
    system = ModelBackend("rfc-v2")
    vm = system.create_vm(0)
    g = vm.create_guest_memfd(4 * P, 1)
    m = g.mmap(4 * P)
    m.fill(0, 4 * P, 1)
    pin = m.pin(2 * P, P)
    with pytest.raises(KvmError) as e:
        g.convert(0, 4 * P, False)
    assert e.value.errno == 11 and e.value.error_offset == 2 * P
    assert all(g.inode.shareability.is_shared(i) for i in range(4))
    assert not any(v for _, _, v in m.ptes.runs())
    pin.unpin()
    g.convert(0, 4 * P, False)
    system.check_invariants()


def test_bind_offset_overflow_quirk() -> None:
    """Spec 5.2: offset + size wrapping negative as loff_t passes kvm_gmem_bind (<= 7.1)."""
    system = ModelBackend()
    vm = system.create_vm(0)
    g = vm.create_guest_memfd(P, 0)
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, GPA, 2 * P, userspace_addr=0, guest_memfd=g,
                               guest_memfd_offset=(1 << 63) - P)
    assert vm.memslots[(0, 1)].gmem_pgoff == ((1 << 63) - P) >> 12
