"""/dev/kvm and VM creation: realkernel.md Environment rows #2-#19, struct sizes."""

from __future__ import annotations

import errno

import pytest

from gmemlab import uapi
from gmemlab.backend import Backend
from gmemlab.errors import KvmError, UnsupportedByBackend
from gmemlab.kernel import KernelBackend, abi, open_kernel_backend
from gmemlab.uapi import Cap, VmType


def test_struct_sizes_match_ioctl_encodings():
    assert abi.check_all_struct_sizes() == {}


def test_protocol_and_identity(kb: KernelBackend, facts):
    assert isinstance(kb.name, str) and kb.name == "kernel"
    # The profile is read from the kernel (release, kvm.gmem_in_place_conversion), with what was measured.
    assert kb.profile is uapi.PROFILES[facts.profile()[0]]
    assert kb.profile_reason.startswith(f"uname -r {facts.release}")
    backend: Backend = kb  # static shape check
    assert backend.fd == kb.fd


# Answers every kernel with guest_memfd gives (KVM_CAP_NR_MEMSLOTS is 32764 on x86).
UNIVERSAL = [
    (Cap.USER_MEMORY, 1),
    (Cap.NR_MEMSLOTS, 32764),
    (Cap.SYNC_MMU, 1),
    (Cap.IMMEDIATE_EXIT, 1),
    (Cap.USER_MEMORY2, 1),
    (Cap.MEMORY_FAULT_INFO, 1),
    (Cap.GUEST_MEMFD, 1),
]
# This machine's kvm_pvm host as realkernel.md rows #3-#14 recorded it; other kernels answer for themselves.
PVM_HOST = [(Cap.READONLY_MEM, 1), (Cap.MEMORY_ATTRIBUTES, 0), (Cap.VM_TYPES, 1), (Cap.PRE_FAULT_MEMORY, 0),
            (Cap.GUEST_MEMFD_FLAGS, 3)]


@pytest.mark.parametrize(("cap", "value"), UNIVERSAL)
def test_capabilities_rows_3_to_14(kb: KernelBackend, vm, cap, value):
    assert kb.check_extension(cap) == value
    assert vm.check_extension(cap) == value


@pytest.mark.parametrize(("cap", "value"), PVM_HOST)
def test_capabilities_of_the_pvm_host(kb: KernelBackend, vm, facts, cap, value):
    if not facts.is_pvm:
        pytest.skip(f"row of the kvm_pvm host; kernel {facts.release} reports KVM_CAP_{cap.name} = "
                    f"{kb.check_extension(cap)}")
    assert kb.check_extension(cap) == value
    assert vm.check_extension(cap) == value


def test_default_vm_caps_agree_with_behaviour(kb: KernelBackend, vm, facts):
    """What any kernel says of a default VM matches what it does: the flags it offers (spec 1.4: MMAP and
    INIT_SHARED from 6.18), memory attributes (none on a VM without private memory, spec 2.7)."""
    assert kb.check_extension(Cap.VM_TYPES) & 1 << VmType.DEFAULT
    assert vm.check_extension(Cap.GUEST_MEMFD_FLAGS) == 3
    assert vm.check_extension(Cap.MEMORY_ATTRIBUTES) == 0
    assert facts.cap(Cap.GUEST_MEMFD) == 1 and facts.types()[0] is VmType.DEFAULT


def test_vm_types_rows_15_to_19(kb: KernelBackend):
    types = kb.vm_types()
    assert types[0] is VmType.DEFAULT
    vm = kb.create_vm(0)
    assert vm.vm_type is VmType.DEFAULT and vm.fd > 0
    for t in (1, 2, 3, 4, 5):
        if t in types:
            kb.create_vm(t).close()
            continue
        with pytest.raises(KvmError) as ei:
            kb.create_vm(t)
        assert ei.value.errno == errno.EINVAL and ei.value.op == "KVM_CREATE_VM"


def test_window_and_reserved_slots(kb: KernelBackend):
    lo, hi = kb.guest_gpa_window()
    assert lo == 2 << 20 and hi == (64 << 30) - (2 << 20)
    assert kb.reserved_slots() == frozenset({uapi.KVM_USER_MEM_SLOTS - 1})


def test_open_missing_device_is_unsupported():
    with pytest.raises(UnsupportedByBackend, match="does not exist"):
        open_kernel_backend("/dev/nonexistent-kvm")
    with pytest.raises(UnsupportedByBackend, match="KVM_GET_API_VERSION"):
        open_kernel_backend("/dev/null")


def test_set_memory_attributes_on_a_default_vm_row_261(kb, vm):
    """Not compiled in (the kvm_pvm host, /dev/kvm reports 0): ENOTTY (#261). Compiled in: a default VM has
    no attributes, so PRIVATE is EINVAL and 0 is accepted (realkernel-private.md 2/default/private, zero)."""
    if kb.check_extension(Cap.MEMORY_ATTRIBUTES) == 0:
        with pytest.raises(KvmError) as ei:
            vm.set_memory_attributes(1 << 20, 4096, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
        assert ei.value.errno == errno.ENOTTY
        return
    with pytest.raises(KvmError) as ei:
        vm.set_memory_attributes(1 << 20, 4096, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
    assert ei.value.errno == errno.EINVAL
    vm.set_memory_attributes(1 << 20, 4096, 0)
