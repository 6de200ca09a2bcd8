"""The model's KVM_PRE_FAULT_MEMORY, instruction fetch and cached MMIO SPTEs: rules, cost, seeded bugs the
conformance cases catch (issue 15 items 1-2)."""

from __future__ import annotations

import errno

import pytest

from gmemlab.backend import REPORT_STUB_SIZE, decode_report_stub, report_stub
from gmemlab.conformance import cases_for, run_case
from gmemlab.errors import KvmError, UnsupportedByBackend, VcpuExit
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.model import page_fault as pf
from gmemlab.uapi import KVM_EXIT_MEMORY_FAULT, KVM_EXIT_MMIO, KVM_MEM_GUEST_MEMFD, VmType

P = 4096
GIB = 1 << 30
GPA = 4 * GIB


def _case(name: str):  # type: ignore[no-untyped-def]
    return next(c for c in cases_for("linux-6.18") if c.name == name)


def _swp(config: HostConfig | None = None):  # type: ignore[no-untyped-def]
    kb = ModelBackend("linux-6.18", config or HostConfig.upstream())
    vm = kb.create_vm(int(VmType.SW_PROTECTED))
    return kb, vm


def test_report_stub_round_trip_and_bad_values() -> None:
    assert len(report_stub(7)) == REPORT_STUB_SIZE
    assert decode_report_stub(report_stub(0xFFFFFFFF)) == 0xFFFFFFFF
    assert decode_report_stub(bytes(REPORT_STUB_SIZE)) is None
    assert decode_report_stub(report_stub(1)[:-1]) is None
    with pytest.raises(ValueError, match="32 bits"):
        report_stub(1 << 32)


def test_pre_fault_without_tdp_or_before_launch_is_eopnotsupp() -> None:
    shadow_mmu = HostConfig.upstream().with_(vm_types=(VmType.DEFAULT,), memory_attributes=False, pre_fault=False,
                                             mmio_caching=False)  # the kvm_pvm host
    kb = ModelBackend("linux-6.18", shadow_mmu)
    vm = kb.create_vm(0)
    cpu = vm.create_vcpu(0)
    with pytest.raises(KvmError) as ei:
        cpu.pre_fault_memory(GPA, P)
    assert ei.value.errno == errno.EOPNOTSUPP
    with pytest.raises(KvmError) as ei:
        cpu.pre_fault_memory(GPA, P, 1)  # the argument checks come first
    assert ei.value.errno == errno.EINVAL
    for vm_type in (VmType.SNP, VmType.TDX):
        cpu = ModelBackend("linux-6.18", HostConfig.upstream()).create_vm(int(vm_type)).create_vcpu(0)
        with pytest.raises(KvmError) as ei:
            cpu.pre_fault_memory(GPA, P)
        assert ei.value.errno == errno.EOPNOTSUPP


def test_pre_fault_of_64_gib_costs_per_mapping_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing walks pages: 64 GiB of private 4 KiB-mapped guest_memfd and 64 GiB of anonymous memory take at most
    a fault per 2 MiB decision (the range path: one for the run) and one for the whole anonymous slot, and every
    page is counted."""
    calls = []
    real = pf.kvm_mmu_page_fault
    monkeypatch.setattr(pf, "kvm_mmu_page_fault", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    kb, vm = _swp(HostConfig.upstream().with_(tdp_max_level=1))
    size = 64 * GIB
    gmem = vm.create_guest_memfd(size, 0)
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, GPA, size, 0, gmem, 0)
    vm.set_memory_attributes(GPA, size, 8)
    anon = kb.mmap_anonymous(size)
    vm.set_user_memory_region2(2, 0, GPA + size, size, anon.address)
    cpu = vm.create_vcpu(0)
    assert cpu.pre_fault_memory(GPA, 2 * size) == (GPA + 2 * size, 0)
    assert len(calls) <= size // (2 << 20) + 1
    assert kb.counters.counters["pre_fault_pages"] == 2 * size // P
    assert kb.counters.counters["guest_faults"] == 2 * size // P
    kb.check_invariants()


def test_execute_is_a_read_for_routing() -> None:
    kb, vm = _swp()
    anon = kb.mmap_anonymous(4 * P)
    anon.write(0, report_stub(0xAB))
    vm.set_user_memory_region(1, 0, GPA, 4 * P, anon.address)
    vm.set_user_memory_region(2, 2, GPA + 4 * P, 4 * P, anon.address)  # read-only: fetches are reads
    cpu = vm.create_vcpu(0)
    assert cpu.execute(GPA) == 0xAB
    assert cpu.execute(GPA + 4 * P) == 0xAB
    vm.set_memory_attributes(GPA, P, 8)
    with pytest.raises(VcpuExit) as ei:
        cpu.execute(GPA)
    assert (ei.value.exit_reason, ei.value.is_write) == (KVM_EXIT_MEMORY_FAULT, False)
    with pytest.raises(UnsupportedByBackend, match="not a report stub"):
        cpu.execute(GPA + 4 * P + 0x100)
    with pytest.raises(UnsupportedByBackend, match="emulated MMIO"):
        cpu.execute(GPA + (1 << 20))


def test_cached_mmio_spte_outlives_attribute_changes() -> None:
    """6.18.2 under QEMU (kvm.mmio_caching=Y): a GPA without memslot the guest touched stays emulated MMIO after
    it is made private, and is a shared-type memory fault once a memslot change made the SPTE stale."""
    kb, vm = _swp()
    anon = kb.mmap_anonymous(4 * P)
    vm.set_user_memory_region(1, 0, GPA, 4 * P, anon.address)
    cpu = vm.create_vcpu(0)
    hole = GPA + (1 << 20)
    vm.set_memory_attributes(hole + P, P, 8)
    with pytest.raises(VcpuExit) as ei:
        cpu.read(hole + P, 1)  # never touched: a private fault, as the attribute says
    assert (ei.value.exit_reason, ei.value.flags) == (KVM_EXIT_MEMORY_FAULT, 8)
    for expect in (KVM_EXIT_MMIO, KVM_EXIT_MMIO):
        with pytest.raises(VcpuExit) as ei:
            cpu.read(hole, 1)
        assert ei.value.exit_reason == expect
        vm.set_memory_attributes(hole, P, 8)
    vm.set_user_memory_region(2, 0, GPA + (2 << 20), 4 * P, anon.address)
    with pytest.raises(VcpuExit) as ei:
        cpu.read(hole, 1)
    assert (ei.value.exit_reason, ei.value.flags) == (KVM_EXIT_MEMORY_FAULT, 0)
    assert cpu.pre_fault_memory(GPA, P) == (GPA + P, 0)
    with pytest.raises(KvmError) as ek:  # pre-fault takes the attribute, not the cached SPTE
        cpu.pre_fault_memory(hole, P)
    assert ek.value.errno == errno.EFAULT
    # Without MMIO caching (the kvm_pvm host) the attribute decides every time.
    kb, vm = _swp(HostConfig.upstream().with_(mmio_caching=False))
    cpu = vm.create_vcpu(0)
    with pytest.raises(VcpuExit):
        cpu.read(hole, 1)
    vm.set_memory_attributes(hole, P, 8)
    with pytest.raises(VcpuExit) as ei:
        cpu.read(hole, 1)
    assert (ei.value.exit_reason, ei.value.flags) == (KVM_EXIT_MEMORY_FAULT, 8)


def test_mmio_caching_comes_from_the_kernels_module_parameter() -> None:
    from gmemlab.hostfacts import HostFacts

    base = HostFacts("6.18.2", {}, {}, ("default",), 1, (0, 1 << 36))
    assert HostConfig.from_facts(base).mmio_caching  # type: ignore[attr-defined]
    off = HostFacts("6.18.44", {}, {}, ("default",), 1, (0, 1 << 36), {"kvm.mmio_caching": "N"})
    assert not HostConfig.from_facts(off).mmio_caching  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "case,target,replacement,message",
    [
        ("pre_fault_private_without_gmem", "gmemlab.model.pre_fault._errno_of", lambda exit_: errno.ENOENT,
         "expected EFAULT"),
        ("pre_fault_memory_test", "gmemlab.model.pre_fault.fault_in_range",
         lambda vm, start, end, write, prefault: (end, None), "one page past"),
        ("execute_private_guest_written", "gmemlab.model.kvm_main.decode_report_stub",
         lambda code: 0x99999999, "guest_memfd's code"),
        ("private_mmio_gpa_made_private", "gmemlab.model.kvm_host.Kvm.kvm_swap_active_memslots",
         lambda self, as_id: None, "stale MMIO SPTE"),
    ],
)
def test_seeded_bugs_fail_the_cases(monkeypatch: pytest.MonkeyPatch, case, target, replacement, message) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(target, replacement)
    result = run_case(_case(case), lambda p: ModelBackend(p), "model", "linux-6.18")
    assert result.status == "fail" and message in result.detail, result.detail


def test_model_setfl_keeps_fasync_clear() -> None:
    g = ModelBackend("linux-6.18", HostConfig.upstream()).create_vm(0).create_guest_memfd(P, 0)
    before = g.fcntl(3)
    g.fcntl(4, before | 0o20000 | 0o4000)  # FASYNC | O_NONBLOCK
    assert g.fcntl(3) == before | 0o4000
