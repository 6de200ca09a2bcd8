"""x86-64 vCPU ABI the kernel backend needs beyond :mod:`gmemlab.uapi`: register structs and ``kvm_run``.

Layouts follow ``arch/x86/include/uapi/asm/kvm.h`` (``struct kvm_regs``, ``kvm_sregs``, ``kvm_segment``,
``kvm_dtable``) and ``include/uapi/linux/kvm.h`` (``struct kvm_run``, ``kvm_signal_mask``). The sizes are
checked against the sizes encoded in the ioctl numbers by :func:`check_vcpu_struct_sizes`, like
:func:`gmemlab.uapi.check_struct_sizes` does for the guest_memfd structs.
"""

from __future__ import annotations

import ctypes

from .. import uapi
from ..uapi import IO, IOR, IOW, IOWR, KVMIO

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class KvmRegs(ctypes.Structure):
    """``struct kvm_regs`` (144 bytes): the general registers, rip and rflags."""

    _fields_ = tuple(
        (name, u64)
        for name in (
            "rax",
            "rbx",
            "rcx",
            "rdx",
            "rsi",
            "rdi",
            "rsp",
            "rbp",
            "r8",
            "r9",
            "r10",
            "r11",
            "r12",
            "r13",
            "r14",
            "r15",
            "rip",
            "rflags",
        )
    )


class KvmSegment(ctypes.Structure):
    """``struct kvm_segment`` (24 bytes)."""

    _fields_ = (
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    )


class KvmDtable(ctypes.Structure):
    """``struct kvm_dtable`` (16 bytes): GDT/IDT base and limit."""

    _fields_ = (("base", u64), ("limit", u16), ("padding", u16 * 3))


class KvmSregs(ctypes.Structure):
    """``struct kvm_sregs`` (312 bytes): segments, descriptor tables, control registers, EFER."""

    _fields_ = (
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * 4),
    )


class KvmSignalMask(ctypes.Structure):
    """``struct kvm_signal_mask`` with its 8-byte kernel sigset (``len`` = 8 on x86-64)."""

    _fields_ = (("len", u32), ("sigset", u64))


class KvmCpuidEntry2(ctypes.Structure):
    """``struct kvm_cpuid_entry2`` (40 bytes): one CPUID leaf/subleaf."""

    _fields_ = (
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    )


class KvmCpuidHeader(ctypes.Structure):
    """The fixed part of ``struct kvm_cpuid2`` (8 bytes): ``nent``, padding; the entries follow."""

    _fields_ = (("nent", u32), ("padding", u32))


CPUID_MAX_ENTRIES = 256  # more than any x86 CPU reports; KVM_GET_SUPPORTED_CPUID says E2BIG otherwise


def kvm_cpuid2(nent: int) -> ctypes.Structure:
    """A ``struct kvm_cpuid2`` with room for ``nent`` entries."""

    class KvmCpuid2(ctypes.Structure):
        _fields_ = (("nent", u32), ("padding", u32), ("entries", KvmCpuidEntry2 * nent))

    buf = KvmCpuid2()
    buf.nent = nent
    return buf


KVM_GET_SUPPORTED_CPUID = IOWR(KVMIO, 0x05, ctypes.sizeof(KvmCpuidHeader))
KVM_SET_CPUID2 = IOW(KVMIO, 0x90, ctypes.sizeof(KvmCpuidHeader))
KVM_GET_REGS = IOR(KVMIO, 0x81, ctypes.sizeof(KvmRegs))
KVM_SET_REGS = IOW(KVMIO, 0x82, ctypes.sizeof(KvmRegs))
KVM_GET_SREGS = IOR(KVMIO, 0x83, ctypes.sizeof(KvmSregs))
KVM_SET_SREGS = IOW(KVMIO, 0x84, ctypes.sizeof(KvmSregs))
KVM_SET_SIGNAL_MASK = IOW(KVMIO, 0x8B, 4)  # the struct's fixed part: __u32 len; then sigset[]
KVM_GET_VCPU_MMAP_SIZE = IO(KVMIO, 0x04)

# struct kvm_run (include/uapi/linux/kvm.h): fixed header, then the exit union at byte 32.
RUN_IMMEDIATE_EXIT = 1  # __u8 immediate_exit
RUN_EXIT_REASON = 8  # __u32 exit_reason
RUN_UNION = uapi.KVM_RUN_EXIT_UNION_OFFSET
# exit union members
RUN_MMIO_PHYS_ADDR = RUN_UNION + 0  # __u64 phys_addr
RUN_MMIO_DATA = RUN_UNION + 8  # __u8 data[8]
RUN_MMIO_LEN = RUN_UNION + 16  # __u32 len
RUN_MMIO_IS_WRITE = RUN_UNION + 20  # __u8 is_write
RUN_INTERNAL_SUBERROR = RUN_UNION + 0  # __u32 suberror
RUN_INTERNAL_NDATA = RUN_UNION + 4  # __u32 ndata
RUN_INTERNAL_DATA = RUN_UNION + 8  # __u64 data[16]
RUN_MEMORY_FAULT = RUN_UNION  # __u64 flags, gpa, size (uapi.MEMORY_FAULT_EXIT)

STRUCT_SIZES = {"kvm_regs": 144, "kvm_segment": 24, "kvm_dtable": 16, "kvm_sregs": 312,
                "kvm_cpuid_entry2": 40, "kvm_cpuid2": 8}


def check_vcpu_struct_sizes() -> dict[str, tuple[int, int]]:
    """vCPU struct sizes vs their ioctl encodings and the ABI sizes; returns mismatches (empty = all agree)."""
    bad: dict[str, tuple[int, int]] = {}
    for name, number, st in (
        ("KVM_GET_REGS", KVM_GET_REGS, KvmRegs),
        ("KVM_SET_REGS", KVM_SET_REGS, KvmRegs),
        ("KVM_GET_SREGS", KVM_GET_SREGS, KvmSregs),
        ("KVM_SET_SREGS", KVM_SET_SREGS, KvmSregs),
        ("KVM_GET_SUPPORTED_CPUID", KVM_GET_SUPPORTED_CPUID, KvmCpuidHeader),
        ("KVM_SET_CPUID2", KVM_SET_CPUID2, KvmCpuidHeader),
    ):
        if uapi.ioc_size(number) != ctypes.sizeof(st):
            bad[name] = (uapi.ioc_size(number), ctypes.sizeof(st))
    layouts: tuple[tuple[str, type[ctypes.Structure]], ...] = (
        ("kvm_regs", KvmRegs),
        ("kvm_segment", KvmSegment),
        ("kvm_dtable", KvmDtable),
        ("kvm_sregs", KvmSregs),
        ("kvm_cpuid_entry2", KvmCpuidEntry2),
        ("kvm_cpuid2", KvmCpuidHeader),
    )
    for name, layout in layouts:
        if ctypes.sizeof(layout) != STRUCT_SIZES[name]:
            bad[name] = (STRUCT_SIZES[name], ctypes.sizeof(layout))
    return bad


def check_all_struct_sizes() -> dict[str, tuple[int, int]]:
    """Both checks: the guest_memfd structs (:mod:`gmemlab.uapi`) and the vCPU structs."""
    return {**uapi.check_struct_sizes(), **check_vcpu_struct_sizes()}
