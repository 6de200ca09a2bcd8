"""conformance.convert: the mechanism comes from the VM's capabilities, never from the version."""

from __future__ import annotations

import pytest

from gmemlab.conformance.convert import IN_PLACE, PER_VM, convert, mechanism
from gmemlab.errors import UnsupportedByBackend
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.uapi import KVM_MEM_GUEST_MEMFD, VmType

P = 4096


@pytest.mark.parametrize(("profile", "config", "want"), [
    ("linux-6.18", HostConfig(), PER_VM),
    ("linux-7.4", HostConfig(memory_attributes=False), IN_PLACE),  # the v8 default turns it on
    ("linux-7.4", HostConfig(memory_attributes=True), PER_VM),  # ... and off (Bv)
    ("linux-7.4", HostConfig(memory_attributes=False, gmem_in_place_conversion=False), None),  # B0
])
def test_mechanism_and_convert(profile: str, config: HostConfig, want: str | None) -> None:
    b = ModelBackend(profile, config)
    vm = b.create_vm(int(VmType.SW_PROTECTED))
    assert mechanism(vm) == want
    assert mechanism(b.create_vm(int(VmType.DEFAULT))) is None
    g = vm.create_guest_memfd(4 * P, 1)
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, 1 << 32, 4 * P, 0, g, 0)
    if want is None:
        with pytest.raises(UnsupportedByBackend, match="KVM_CAP_MEMORY_ATTRIBUTES"):
            convert(vm, g, 1 << 32, 0, P, True)
        return
    assert convert(vm, g, 1 << 32, 0, P, False) == want
    assert not vm.kvm_mem_is_private(1 << 20)
    convert(vm, g, 1 << 32, 0, P, True)
    assert vm.kvm_mem_is_private(1 << 20)
