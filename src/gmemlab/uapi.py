"""ABI facts of the guest_memfd uAPI: ioctl numbers, struct layouts, flag bits, capabilities.

No behaviour lives here, only numbers that are ABI (spec/guest_memfd.md section 1). Everything that
differs between merged Linux (``linux-6.18``) and the seed's RFC (``rfc-v2``) is expressed as data in
:class:`ApiProfile`; behaviour that depends on it lives in :mod:`gmemlab.model.profiles`.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from .errors import UnrepresentableArgument

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PMD_SIZE = 1 << 21
PUD_SIZE = 1 << 30

U64_MAX = (1 << 64) - 1
LOFF_MAX = (1 << 63) - 1  # largest positive loff_t

# ---------------------------------------------------------------------------------------------
# ioctl encoding (asm-generic/ioctl.h, x86-64 layout): dir<<30 | size<<16 | type<<8 | nr
# ---------------------------------------------------------------------------------------------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


def IO(type_: int, nr: int) -> int:
    return _ioc(_IOC_NONE, type_, nr, 0)


def IOW(type_: int, nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, type_, nr, size)


def IOR(type_: int, nr: int, size: int) -> int:
    return _ioc(_IOC_READ, type_, nr, size)


def IOWR(type_: int, nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, type_, nr, size)


def ioc_size(number: int) -> int:
    """The argument size encoded in an ioctl number (bits 16..29)."""
    return (number >> 16) & 0x3FFF


KVMIO = 0xAE
KVM_GMEM_IO = 0xAF  # RFC2; the same type byte vhost uses (spec 1.1 note)


# ---------------------------------------------------------------------------------------------
# Structures (spec 1.2): little-endian, natural alignment, no implicit padding.
# ---------------------------------------------------------------------------------------------
class KvmCreateGuestMemfd(ctypes.Structure):
    _fields_ = (("size", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("reserved", ctypes.c_uint64 * 6))


class KvmUserspaceMemoryRegion(ctypes.Structure):
    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    )


class KvmUserspaceMemoryRegion2(ctypes.Structure):
    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
        ("guest_memfd_offset", ctypes.c_uint64),
        ("guest_memfd", ctypes.c_uint32),
        ("pad1", ctypes.c_uint32),
        ("pad2", ctypes.c_uint64 * 14),
    )


class KvmMemoryAttributes(ctypes.Structure):
    _fields_ = (
        ("address", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("attributes", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class KvmPreFaultMemory(ctypes.Structure):
    _fields_ = (
        ("gpa", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("padding", ctypes.c_uint64 * 5),
    )


class KvmMemoryAttributes2(ctypes.Structure):
    """``struct kvm_memory_attributes2`` (128 bytes; in-place conversion, linux-7.md 1.1): the ``offset``
    member of the union at 0 (``address`` for the VM-fd form the series dropped), ``error_offset`` is output."""

    _fields_ = (
        ("offset", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("attributes", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("error_offset", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64 * 11),
    )


class KvmGmemConvert(ctypes.Structure):
    """RFC2 ``struct kvm_gmem_convert`` (64 bytes)."""

    _fields_ = (
        ("offset", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("error_offset", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64 * 5),
    )


# kvm_run exit payload for KVM_EXIT_MEMORY_FAULT: flags, gpa, size (u64 each) at byte 32.
KVM_RUN_EXIT_UNION_OFFSET = 32
MEMORY_FAULT_EXIT = struct.Struct("<QQQ")

# ---------------------------------------------------------------------------------------------
# ioctl table (spec 1.1)
# ---------------------------------------------------------------------------------------------
KVM_GET_API_VERSION = IO(KVMIO, 0x00)
KVM_CREATE_VM = IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = IO(KVMIO, 0x04)
KVM_CREATE_VCPU = IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = IOW(KVMIO, 0x46, ctypes.sizeof(KvmUserspaceMemoryRegion))
KVM_SET_USER_MEMORY_REGION2 = IOW(KVMIO, 0x49, ctypes.sizeof(KvmUserspaceMemoryRegion2))
KVM_RUN = IO(KVMIO, 0x80)
KVM_SET_MEMORY_ATTRIBUTES = IOW(KVMIO, 0xD2, ctypes.sizeof(KvmMemoryAttributes))
KVM_CREATE_GUEST_MEMFD = IOWR(KVMIO, 0xD4, ctypes.sizeof(KvmCreateGuestMemfd))
KVM_PRE_FAULT_MEMORY = IOWR(KVMIO, 0xD5, ctypes.sizeof(KvmPreFaultMemory))
# linux-7.4 (in-place conversion): issued on the guest_memfd fd only; same nr as the 32-byte VM ioctl.
KVM_SET_MEMORY_ATTRIBUTES2 = IOWR(KVMIO, 0xD2, ctypes.sizeof(KvmMemoryAttributes2))
KVM_GMEM_CONVERT_SHARED = IOWR(KVM_GMEM_IO, 0x41, ctypes.sizeof(KvmGmemConvert))
KVM_GMEM_CONVERT_PRIVATE = IOWR(KVM_GMEM_IO, 0x42, ctypes.sizeof(KvmGmemConvert))

# Numbers quoted verbatim by the spec; checked against the encoding by the tests.
SPEC_IOCTL_NUMBERS: dict[str, int] = {
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_CREATE_GUEST_MEMFD": 0xC040AED4,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_SET_USER_MEMORY_REGION2": 0x40A0AE49,
    "KVM_SET_MEMORY_ATTRIBUTES": 0x4020AED2,
    "KVM_PRE_FAULT_MEMORY": 0xC040AED5,
    "KVM_RUN": 0xAE80,
    "KVM_GMEM_CONVERT_SHARED": 0xC040AF41,
    "KVM_GMEM_CONVERT_PRIVATE": 0xC040AF42,
    "KVM_SET_MEMORY_ATTRIBUTES2": 0xC080AED2,  # linux-7.md 1.1
}

STRUCT_SIZES: dict[str, int] = {
    "kvm_create_guest_memfd": 64,
    "kvm_userspace_memory_region": 32,
    "kvm_userspace_memory_region2": 160,
    "kvm_memory_attributes": 32,
    "kvm_pre_fault_memory": 64,
    "kvm_gmem_convert": 64,
    "kvm_memory_attributes2": 128,
}

# ---------------------------------------------------------------------------------------------
# Constants (spec 1.3)
# ---------------------------------------------------------------------------------------------
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2
KVM_USER_MEM_SLOTS = 32764  # realkernel.md #4: KVM_CAP_NR_MEMSLOTS on x86
KVM_ADDRESS_SPACE_NUM = 1  # default VMs have one address space (realkernel #229)

KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_MEMORY_FAULT = 39
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_NO_HIDE_STALE = 0x04
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
FALLOC_FL_UNSHARE_RANGE = 0x40
FALLOC_FL_WRITE_ZEROES = 0x80

# HugeTLB page-size encoding in creation flags (RFC2 guestmem.h, spec 1.3)
GUESTMEM_HUGETLB_FLAG_SHIFT = 58
GUESTMEM_HUGETLB_FLAG_MASK = 0x3F
GUESTMEM_HUGETLB_FLAG_2MB = 21 << GUESTMEM_HUGETLB_FLAG_SHIFT
GUESTMEM_HUGETLB_FLAG_1GB = 30 << GUESTMEM_HUGETLB_FLAG_SHIFT


class VmType(IntEnum):
    """x86 VM types (argument of KVM_CREATE_VM, bits of KVM_CAP_VM_TYPES)."""

    DEFAULT = 0
    SW_PROTECTED = 1
    SEV = 2
    SEV_ES = 3
    SNP = 4
    TDX = 5

    @property
    def has_private_mem(self) -> bool:
        """``kvm_arch_has_private_mem``: SW_PROTECTED, SNP and TDX (not SEV/SEV-ES, spec 1.4)."""
        return self in (VmType.SW_PROTECTED, VmType.SNP, VmType.TDX)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class Cap(IntEnum):
    """Capability numbers (spec 1.4). RFC2 numbers collide with merged caps (spec 5.11)."""

    USER_MEMORY = 3
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    SYNC_MMU = 16
    READONLY_MEM = 81
    IMMEDIATE_EXIT = 136
    MAX_VCPUS = 66
    X86_SMM = 117
    MULTI_ADDRESS_SPACE = 118
    MAX_VCPU_ID = 128
    EXIT_HYPERCALL = 201
    USER_MEMORY2 = 231
    MEMORY_FAULT_INFO = 232
    MEMORY_ATTRIBUTES = 233
    GUEST_MEMFD = 234
    VM_TYPES = 235
    PRE_FAULT_MEMORY = 236
    GUEST_MEMFD_FLAGS = 244
    # RFC2 (provisional numbers)
    GMEM_SHARED_MEM = 240
    GMEM_CONVERSION = 241
    GMEM_HUGETLB = 242


# KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES (in-place conversion, linux-7.md 1.1) is UNVERIFIED: its number moved
# with every rebase of the series (246, 248, 249, 250 in v8, 251 in one tree). 250 is the only value a running
# kernel answered (realkernel-private.md, column B). It is kept here and nowhere else; read it with
# :func:`cap_guest_memfd_memory_attributes`, which honours the override below (the kernel backend prefers
# the number in <linux/kvm.h> when the installed header defines it).
KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES = 250
CAP_GMEM_ATTRIBUTES_ENV = "GMEMLAB_KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES"


def cap_guest_memfd_memory_attributes() -> int:
    """The capability number in force: ``$GMEMLAB_KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`` if set, else
    :data:`KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`. A malformed override is a ValueError naming it (the CLI
    checks it up front and reports it as bad input)."""
    import os

    text = os.environ.get(CAP_GMEM_ATTRIBUTES_ENV, "").strip()
    if not text:
        return KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES
    try:
        value = int(text, 0)
    except ValueError:
        raise ValueError(f"${CAP_GMEM_ATTRIBUTES_ENV}={text!r} is not a capability number") from None
    if not 0 < value < 1 << 31:
        raise ValueError(f"${CAP_GMEM_ATTRIBUTES_ENV}={text!r} is out of range (1..2^31-1)")
    return value


class GmemFlags618(IntFlag):
    """Merged Linux 6.18 creation flags."""

    MMAP = 1 << 0
    INIT_SHARED = 1 << 1


class GmemFlagsRfc2(IntFlag):
    """RFC v2 creation flags: the same bits, other meanings (spec 1.3)."""

    SUPPORT_SHARED = 1 << 0
    INIT_PRIVATE = 1 << 1
    HUGETLB = 1 << 2


@dataclass(frozen=True)
class ApiProfile:
    """The uAPI facts of one kernel lineage: which flag bit has which name, which caps exist.

    ``flag_names`` maps each defined creation-flag bit to its name in this profile; which of them a VM
    accepts is behaviour (see ``gmemlab.model.profiles``). ``caps`` lists the capabilities the lineage
    defines.
    """

    name: str
    flag_names: dict[int, str]
    caps: tuple[Cap, ...]
    has_conversion_ioctls: bool
    has_hugetlb: bool
    description: str = ""
    aliases: tuple[str, ...] = field(default=())
    parent: str | None = None  # the lineage: each profile states only its differences from its parent
    has_attributes2: bool = False  # KVM_SET_MEMORY_ATTRIBUTES2 on the guest_memfd fd (in-place conversion)

    def flag_name(self, bit: int) -> str:
        return self.flag_names.get(bit, f"bit{bit.bit_length() - 1}(unknown)")

    def describe_flags(self, flags: int) -> str:
        if flags == 0:
            return "0"
        parts = []
        for b in range(64):
            if flags & (1 << b):
                parts.append(self.flag_name(1 << b))
        return "|".join(parts)


_COMMON_CAPS = (
    Cap.USER_MEMORY,
    Cap.NR_MEMSLOTS,
    Cap.SYNC_MMU,
    Cap.READONLY_MEM,
    Cap.IMMEDIATE_EXIT,
    Cap.USER_MEMORY2,
    Cap.MEMORY_FAULT_INFO,
    Cap.MEMORY_ATTRIBUTES,
    Cap.GUEST_MEMFD,
    Cap.VM_TYPES,
    Cap.PRE_FAULT_MEMORY,
)

LINUX_6_18 = ApiProfile(
    name="linux-6.18",
    flag_names={GmemFlags618.MMAP: "MMAP", GmemFlags618.INIT_SHARED: "INIT_SHARED"},
    caps=(*_COMMON_CAPS, Cap.GUEST_MEMFD_FLAGS),
    has_conversion_ioctls=False,
    has_hugetlb=False,
    description="merged Linux 6.18: MMAP / INIT_SHARED, whole-file shared or private state",
)

RFC_V2 = ApiProfile(
    name="rfc-v2",
    flag_names={
        GmemFlagsRfc2.SUPPORT_SHARED: "SUPPORT_SHARED",
        GmemFlagsRfc2.INIT_PRIVATE: "INIT_PRIVATE",
        GmemFlagsRfc2.HUGETLB: "HUGETLB",
    },
    caps=(*_COMMON_CAPS, Cap.GMEM_SHARED_MEM, Cap.GMEM_CONVERSION, Cap.GMEM_HUGETLB),
    has_conversion_ioctls=True,
    has_hugetlb=True,
    description="the seed's RFC v2: SUPPORT_SHARED / INIT_PRIVATE, per-index shareability, conversion ioctls",
)

LINUX_7_3 = ApiProfile(
    name="linux-7.3",
    flag_names=LINUX_6_18.flag_names,
    caps=LINUX_6_18.caps,
    has_conversion_ioctls=False,
    has_hugetlb=False,
    description="merged Linux 6.19-7.3: gmem mempolicy, 7.0 populate rules, 7.2 EEXIST and unsigned bindings",
    parent=LINUX_6_18.name,
)

LINUX_7_4 = ApiProfile(
    name="linux-7.4",
    flag_names=LINUX_6_18.flag_names,
    caps=LINUX_6_18.caps,
    has_conversion_ioctls=False,
    has_hugetlb=False,
    description="7.3 + in-place conversion (series v13, queued for 7.4) behind kvm.gmem_in_place_conversion",
    parent=LINUX_7_3.name,
    has_attributes2=True,
)

LINUX_7_4_V8 = ApiProfile(
    name="linux-7.4-v8",
    flag_names=LINUX_6_18.flag_names,
    caps=LINUX_6_18.caps,
    has_conversion_ioctls=False,
    has_hugetlb=False,
    description="the recorded kernel: in-place conversion v8 ported to 7.1.5 (realkernel-private.md column B)",
    parent=LINUX_7_4.name,
    has_attributes2=True,
)

PROFILES: dict[str, ApiProfile] = {p.name: p for p in (LINUX_6_18, LINUX_7_3, LINUX_7_4, LINUX_7_4_V8, RFC_V2)}


def lineage(name: str) -> list[str]:
    """``name`` and its ancestors, nearest first (``linux-7.4`` -> ``[linux-7.4, linux-7.3, linux-6.18]``)."""
    out: list[str] = []
    current: str | None = name
    while current is not None:
        out.append(current)
        current = PROFILES[current].parent
    return out


def huge_page_size_from_flags(flags: int) -> int:
    """Page size encoded in bits 58-63 (log2); 0 means the default hstate (2 MiB on x86)."""
    log2 = (flags >> GUESTMEM_HUGETLB_FLAG_SHIFT) & GUESTMEM_HUGETLB_FLAG_MASK
    return 0 if log2 == 0 else 1 << log2


def page_aligned(value: int) -> bool:
    return value & (PAGE_SIZE - 1) == 0


def as_loff(value: int) -> int:
    """Interpret a u64 as the kernel's signed ``loff_t``."""
    value &= U64_MAX
    return value - (1 << 64) if value >> 63 else value


# C types of uAPI arguments and their widths in bits (x86-64 LP64).
CTYPE_BITS = {"unsigned char": 8, "__u16": 16, "__u32": 32, "int": 32, "unsigned int": 32, "__u64": 64,
              "unsigned long": 64, "size_t": 64, "loff_t": 64, "off_t": 64, "long": 64}
_CTYPE_RANGES = {ctype: (-(1 << (bits - 1)), 1 << bits) for ctype, bits in CTYPE_BITS.items()}  # [lo, hi)


def c_value(value: object, ctype: str, name: str, op: str) -> int:
    """``value`` as the bit pattern a C argument of type ``ctype`` receives (two's complement for negative
    values, as a C caller's implicit conversion passes them). A value the type cannot hold, or that is not an
    integer, raises :class:`~gmemlab.errors.UnrepresentableArgument`: it is never truncated."""
    lo, hi = _CTYPE_RANGES[ctype]
    if type(value) is int and 0 <= value < hi:  # the common case, already its own bit pattern
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value < hi:
        raise UnrepresentableArgument(op, name, value, ctype)
    return value & (hi - 1)


def c_signed(value: object, ctype: str, name: str, op: str) -> int:
    """Like :func:`c_value`, read back as the signed C type (``loff_t``, ``int``)."""
    bits = CTYPE_BITS[ctype]
    pattern = c_value(value, ctype, name, op)
    return pattern - (1 << bits) if pattern >> (bits - 1) else pattern


def check_struct_sizes() -> dict[str, tuple[int, int]]:
    """Struct size vs the size encoded in its ioctl number; returns mismatches (empty when all agree)."""
    pairs = {
        "KVM_CREATE_GUEST_MEMFD": (KVM_CREATE_GUEST_MEMFD, KvmCreateGuestMemfd),
        "KVM_SET_USER_MEMORY_REGION": (KVM_SET_USER_MEMORY_REGION, KvmUserspaceMemoryRegion),
        "KVM_SET_USER_MEMORY_REGION2": (KVM_SET_USER_MEMORY_REGION2, KvmUserspaceMemoryRegion2),
        "KVM_SET_MEMORY_ATTRIBUTES": (KVM_SET_MEMORY_ATTRIBUTES, KvmMemoryAttributes),
        "KVM_PRE_FAULT_MEMORY": (KVM_PRE_FAULT_MEMORY, KvmPreFaultMemory),
        "KVM_GMEM_CONVERT_SHARED": (KVM_GMEM_CONVERT_SHARED, KvmGmemConvert),
        "KVM_GMEM_CONVERT_PRIVATE": (KVM_GMEM_CONVERT_PRIVATE, KvmGmemConvert),
        "KVM_SET_MEMORY_ATTRIBUTES2": (KVM_SET_MEMORY_ATTRIBUTES2, KvmMemoryAttributes2),
    }
    bad = {}
    for name, (number, struct_type) in pairs.items():
        if ioc_size(number) != ctypes.sizeof(struct_type):
            bad[name] = (ioc_size(number), ctypes.sizeof(struct_type))
    return bad

# ---------------------------------------------------------------------------------------------
# NUMA memory policy (mbind / get_mempolicy / move_pages): guest_memfd keeps a shared policy per inode
# from U6.19 (spec 2.4), exercised by the selftest's test_mbind / test_numa_allocation (spec 3.1).
# ---------------------------------------------------------------------------------------------
MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
MPOL_BIND = 2
MPOL_INTERLEAVE = 3
MPOL_LOCAL = 4
MPOL_PREFERRED_MANY = 5
MPOL_WEIGHTED_INTERLEAVE = 6
MPOL_MAX = 7
MPOL_F_ADDR = 1 << 1
MPOL_MODE_FLAGS = (1 << 15) | (1 << 14) | (1 << 13)  # STATIC_NODES, RELATIVE_NODES, NUMA_BALANCING
SYS_MBIND = 237
SYS_GET_MEMPOLICY = 239
SYS_MOVE_PAGES = 279
