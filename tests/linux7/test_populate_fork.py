"""kvm_gmem_populate across the lineage (spec 2.9, linux-7.md 0 and 1.3) and the forked VMM child."""

from __future__ import annotations

import errno

import pytest

from gmemlab.errors import HostSigbus, KvmError
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.uapi import KVM_MEM_GUEST_MEMFD, VmType

P = 4096
GPA = 1 << 32
ON = HostConfig.upstream().with_(gmem_in_place_conversion=True)


def setup(profile: str, flags: int = 0, config: HostConfig = ON):  # type: ignore[no-untyped-def]
    b = ModelBackend(profile, config)
    vm = b.create_vm(int(VmType.SW_PROTECTED))
    g = vm.create_guest_memfd(8 * P, flags)
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, GPA, 8 * P, 0, g, 0)
    if not b.behaviour.in_place_conversion(config):
        vm.set_memory_attributes(GPA, 8 * P, 8)
    return b, vm, g


def test_prepared_folio_is_eexist_until_7_0() -> None:
    for profile, want in (("linux-6.18", errno.EEXIST), ("linux-7.3", None)):
        _b, vm, _g = setup(profile)
        assert vm.kvm_gmem_populate(GPA >> 12, b"\x11" * P, 1) == 1
        if want is None:
            assert vm.kvm_gmem_populate(GPA >> 12, b"\x12" * P, 1) == 1
        else:
            with pytest.raises(KvmError) as exc:
                vm.kvm_gmem_populate(GPA >> 12, b"\x12" * P, 1)
            assert exc.value.errno == want


def test_source_must_be_page_aligned_from_7_0() -> None:
    _b, vm, _g = setup("linux-6.18")
    assert vm.kvm_gmem_populate(GPA >> 12, b"\x11" * P, 1, src_addr=0x1010) == 1
    _b, vm, _g = setup("linux-7.3")
    with pytest.raises(KvmError, match="4 KiB aligned") as exc:
        vm.kvm_gmem_populate(GPA >> 12, b"\x11" * P, 1, src_addr=0x1010)
    assert exc.value.errno == errno.EINVAL


def test_in_place_launch() -> None:
    """7.4: the VMM writes the image through the mapping while shared, converts it private and populates with
    a NULL source: the guest runs the image in place. A shared gfn cannot be populated (EINVAL)."""
    b, vm, g = setup("linux-7.4", flags=3)
    m = g.mmap(8 * P)
    m.write(0, b"IMAGE")
    with pytest.raises(KvmError) as exc:
        vm.kvm_gmem_populate(GPA >> 12, None, 1)
    assert exc.value.errno == errno.EINVAL and "not private" in exc.value.reason
    g.set_memory_attributes2(0, 8 * P, 8)
    assert vm.kvm_gmem_populate(GPA >> 12, None, 8) == 8
    assert vm.create_vcpu(0).read(GPA, 5) == b"IMAGE"
    with pytest.raises(HostSigbus):
        m.read(0, 1)
    # before 7.4 a NULL source populates zeros
    b, vm, g = setup("linux-7.3", flags=1)
    vm.kvm_gmem_populate(GPA >> 12, None, 1)
    assert vm.create_vcpu(0).read(GPA, 5) == bytes(5)


def test_forked_child_follows_conversions_and_gets_eio_from_kvm() -> None:
    b, vm, g = setup("linux-7.4", flags=3)
    m = g.mmap(8 * P)
    m.write(0, b"\x70")
    child = b.fork()
    cm = child.mapping(m)
    assert cm.address == m.address and cm.read(0, 1) == b"\x70"
    assert cm.pte_present(0)
    g.set_memory_attributes2(0, P, 8)
    assert not cm.pte_present(0)
    with pytest.raises(HostSigbus):
        cm.read(0, 1)
    with pytest.raises(HostSigbus):
        cm.write(0, b"x")
    for call in (lambda: child.check_extension(vm, 233), lambda: child.create_guest_memfd(vm, P)):
        with pytest.raises(KvmError) as exc:
            call()
        assert exc.value.errno == errno.EIO
    # the child's fds keep the gmem alive after the parent closes its own
    m.munmap()
    g.close()
    assert not g.released
    child.exit()
    assert g.released
    b.check_invariants()
