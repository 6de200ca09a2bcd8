"""KVM_PRE_FAULT_MEMORY and instruction fetch (Vcpu.execute) on the kernel under test (issue 15 items 1-2)."""

from __future__ import annotations

import errno

import pytest

from gmemlab import uapi
from gmemlab.backend import report_stub
from gmemlab.errors import KvmError, VcpuExit
from gmemlab.uapi import Cap

P = uapi.PAGE_SIZE
MIB = 1 << 20
GPA = 2 * MIB
GMEM = uapi.KVM_MEM_GUEST_MEMFD


def _errno(fn, *args):  # type: ignore[no-untyped-def]
    with pytest.raises(KvmError) as ei:
        fn(*args)
    return ei.value.errno


def test_pre_fault_memory_follows_the_capability_rows_263_to_267(kb, vm):
    anon = kb.mmap_anonymous(16 * P)
    vm.set_user_memory_region(1, 0, GPA, 16 * P, anon.address)
    cpu = vm.create_vcpu()
    for args in ((GPA, P, 1), (GPA + 1, P, 0), (GPA, 0, 0), (GPA, P + 1, 0), ((1 << 64) - P, 2 * P, 0)):
        assert _errno(cpu.pre_fault_memory, *args) == errno.EINVAL
    if not vm.check_extension(Cap.PRE_FAULT_MEMORY):  # shadow MMU (the kvm_pvm host): realkernel.md #263-#267
        for args in ((GPA, P), (GPA, 16 * P), (GPA + 4 * MIB, P)):
            assert _errno(cpu.pre_fault_memory, *args) == errno.EOPNOTSUPP
        return
    assert cpu.pre_fault_memory(GPA, 16 * P) == (GPA + 16 * P, 0)
    assert cpu.pre_fault_memory(GPA + 12 * P, 8 * P) == (GPA + 16 * P, 4 * P)
    assert _errno(cpu.pre_fault_memory, GPA + 16 * P, 4 * P) == errno.ENOENT


def test_execute_code_from_anonymous_memory_and_gmem(kb, vm):
    anon = kb.mmap_anonymous(4 * P)
    anon.write(0x10, report_stub(0x600D))
    vm.set_user_memory_region(1, 0, GPA, 4 * P, anon.address)
    g = vm.create_guest_memfd(4 * P, 3)
    vm.set_user_memory_region2(2, GMEM, GPA + MIB, 4 * P, 0, g, 0)  # gmem-only, userspace_addr 0
    m = g.mmap(4 * P)
    m.write(P, report_stub(0xF00D))
    cpu = vm.create_vcpu()
    assert cpu.execute(GPA + 0x10) == 0x600D
    # Code in a gmem-only slot without userspace_addr runs: the report routine it jumps to is emulated from the
    # system slot, unlike realkernel.md #277 where the emulated store sat in the gmem page itself.
    assert cpu.execute(GPA + MIB + P) == 0xF00D
    cpu.write(GPA + MIB + 2 * P, report_stub(0xBEEF))
    assert cpu.execute(GPA + MIB + 2 * P) == 0xBEEF
    assert cpu.read(GPA + 0x10, 4) == report_stub(0x600D)[:4]  # back in the service loop


def test_execute_from_a_gpa_without_memslot(vm, facts):
    """KVM emulates the fetch and cannot: kvm_pvm reports an emulation failure, TDP injects #UD into a guest
    without IDT (a triple fault). Either way the vCPU serves the next request."""
    cpu = vm.create_vcpu()
    with pytest.raises(VcpuExit) as ei:
        cpu.execute(GPA + MIB)
    if facts.is_pvm:
        assert (ei.value.exit_reason, ei.value.detail) == (uapi.KVM_EXIT_INTERNAL_ERROR, "suberror 1")
    else:
        assert ei.value.exit_reason in (uapi.KVM_EXIT_INTERNAL_ERROR, uapi.KVM_EXIT_SHUTDOWN)
    with pytest.raises(VcpuExit) as ei:
        cpu.read(GPA + MIB, 8)
    assert ei.value.exit_reason == uapi.KVM_EXIT_MMIO
