"""ABI facts (spec section 1): ioctl numbers, struct layouts, flags per profile, capabilities."""

from __future__ import annotations

import ctypes

import pytest

from gmemlab import uapi
from gmemlab.model import HostConfig
from gmemlab.model.profiles import behaviour


@pytest.mark.parametrize("name,number", sorted(uapi.SPEC_IOCTL_NUMBERS.items()))
def test_ioctl_numbers_match_spec(name: str, number: int) -> None:
    assert getattr(uapi, name) == number


def test_struct_sizes_match_ioctl_encoding() -> None:
    assert uapi.check_struct_sizes() == {}
    sizes = {
        "kvm_create_guest_memfd": uapi.KvmCreateGuestMemfd,
        "kvm_userspace_memory_region": uapi.KvmUserspaceMemoryRegion,
        "kvm_userspace_memory_region2": uapi.KvmUserspaceMemoryRegion2,
        "kvm_memory_attributes": uapi.KvmMemoryAttributes,
        "kvm_pre_fault_memory": uapi.KvmPreFaultMemory,
        "kvm_gmem_convert": uapi.KvmGmemConvert,
    }
    for name, struct in sizes.items():
        assert ctypes.sizeof(struct) == uapi.STRUCT_SIZES[name], name


def test_struct_field_offsets() -> None:
    r2 = uapi.KvmUserspaceMemoryRegion2
    assert (r2.guest_memfd_offset.offset, r2.guest_memfd.offset, r2.pad2.offset) == (32, 40, 48)
    assert uapi.KvmGmemConvert.error_offset.offset == 16


def test_same_bits_mean_different_things_per_profile() -> None:
    assert uapi.LINUX_6_18.describe_flags(3) == "MMAP|INIT_SHARED"
    assert uapi.RFC_V2.describe_flags(3) == "SUPPORT_SHARED|INIT_PRIVATE"
    assert uapi.RFC_V2.describe_flags(1 << 5) == "bit5(unknown)"


def test_hugetlb_size_encoding() -> None:
    assert uapi.GUESTMEM_HUGETLB_FLAG_2MB == 0x5400000000000000
    assert uapi.GUESTMEM_HUGETLB_FLAG_1GB == 0x7800000000000000
    assert uapi.huge_page_size_from_flags(uapi.GUESTMEM_HUGETLB_FLAG_1GB) == 1 << 30
    assert uapi.huge_page_size_from_flags(0) == 0


def test_vm_types_private_memory() -> None:
    assert [t.name for t in uapi.VmType if t.has_private_mem] == ["SW_PROTECTED", "SNP", "TDX"]


@pytest.mark.parametrize(
    "vm_type,expected",
    [(None, 3), (uapi.VmType.DEFAULT, 3), (uapi.VmType.SW_PROTECTED, 1), (uapi.VmType.SEV, 3),
     (uapi.VmType.SEV_ES, 3), (uapi.VmType.SNP, 1), (uapi.VmType.TDX, 1)],
)
def test_guest_memfd_flags_cap_per_vm_type(vm_type: uapi.VmType | None, expected: int) -> None:
    """Spec 1.4 per-VM table of KVM_CAP_GUEST_MEMFD_FLAGS."""
    cfg = HostConfig.upstream()
    assert behaviour("linux-6.18").check_extension(uapi.Cap.GUEST_MEMFD_FLAGS, vm_type, cfg) == expected


def test_rfc_caps_and_flag_rules() -> None:
    cfg = HostConfig.upstream()
    rfc = behaviour("rfc-v2")
    assert rfc.check_extension(uapi.Cap.GMEM_CONVERSION, None, cfg) == 1
    assert rfc.check_extension(uapi.Cap.GUEST_MEMFD_FLAGS, None, cfg) == 0
    assert rfc.check_extension(uapi.Cap.GUEST_MEMFD, uapi.VmType.DEFAULT, cfg) == 0
    # INIT_PRIVATE only valid together with SUPPORT_SHARED (spec 1.5)
    assert rfc.valid_create_flags(uapi.VmType.DEFAULT, 2, cfg) & 2 == 0
    assert rfc.valid_create_flags(uapi.VmType.DEFAULT, 3, cfg) & 2 == 2


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown profile 'linux-9'"):
        behaviour("linux-9")
