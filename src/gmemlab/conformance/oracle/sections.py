"""The recording probe's sections, re-enacted against the :class:`gmemlab.backend.Backend` interface.

One function per section of realkernel-private.md (its "## N." headings), each doing what the section's
description and row labels say, in the order of its rows, and rendering every row it reproduces with
:class:`~gmemlab.conformance.oracle.probe.Probe.row` under the recorded row id. Rows a kernel did not run
(``—``) are not produced for it: the same conditions that made the probe skip them (the in-place capability,
INIT_SHARED on a SW_PROTECTED VM) are read from the backend. What the recording's text leaves open (a byte
the probe wrote before reading, which gmem flags a layout used) is chosen to match the recorded values and
said where it is done.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ...backend import report_stub
from ...errors import KvmError, VcpuExit
from ...uapi import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_SET_MEMORY_ATTRIBUTES,
    KVM_SET_MEMORY_ATTRIBUTES2,
    MPOL_BIND,
    Cap,
    VmType,
    cap_guest_memfd_memory_attributes,
)
from .probe import CANARY, PRIVATE, Probe

P = 4096
MMAP, INIT_SHARED = 1, 2
KEEP = FALLOC_FL_KEEP_SIZE
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
UA = 0x99  # what slot 1's userspace_addr holds in every page (sections 4 and 5)
SWP, DEFAULT = int(VmType.SW_PROTECTED), int(VmType.DEFAULT)
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25

CAPS = (("USER_MEMORY2", Cap.USER_MEMORY2), ("MEMORY_FAULT_INFO", Cap.MEMORY_FAULT_INFO),
        ("MEMORY_ATTRIBUTES", Cap.MEMORY_ATTRIBUTES), ("GUEST_MEMFD", Cap.GUEST_MEMFD),
        ("VM_TYPES", Cap.VM_TYPES), ("PRE_FAULT_MEMORY", Cap.PRE_FAULT_MEMORY),
        ("GUEST_MEMFD_FLAGS", Cap.GUEST_MEMFD_FLAGS), ("GUEST_MEMFD_MEMORY_ATTRIBUTES", None),
        ("X86_SMM", Cap.X86_SMM), ("MULTI_ADDRESS_SPACE", Cap.MULTI_ADDRESS_SPACE), ("NR_MEMSLOTS", Cap.NR_MEMSLOTS))


def _param(system: Any) -> str | None:
    params = system.module_params() if hasattr(system, "module_params") else {}
    value: str | None = params.get("kvm.gmem_in_place_conversion")
    return value


# -- 0. Run identity ---------------------------------------------------------------------------------------

def section0(p: Probe, release: str) -> None:
    """``uname -r / mode / kvm.gmem_in_place_conversion``: the release is the column's (an input); the mode
    and the parameter are the backend's answers."""
    param = _param(p.system)
    p.row("0/kernel", f"{release} / {p.mode()} / {'absent' if param is None else param}")


# -- 1. Capabilities and KVM_CREATE_GUEST_MEMFD flags ----------------------------------------------------------

def section1(p: Probe) -> None:
    param = _param(p.system)
    p.row("1/param", "absent (ENOENT)" if param is None else param)
    vms = {"default_vm": p.system.create_vm(DEFAULT), "swp_vm": p.system.create_vm(SWP)}
    targets = {"devkvm": p.system, **vms}
    for where, obj in targets.items():
        for name, cap in CAPS:
            number = cap_guest_memfd_memory_attributes() if cap is None else int(cap)
            p.row(f"1/cap/{where}/{name}", f"{obj.check_extension(number):#x}")
    for where, vm in vms.items():
        ok = []
        for bit in range(64):
            try:
                vm.create_guest_memfd(4 * P, 1 << bit).close()
                ok.append(str(bit))
            except KvmError:
                pass
        p.row(f"1/gmem_flag/{where}/bit00..63", f"ok for bit(s) {','.join(ok)}; every other bit EINVAL")
        for label, flags in (("MMAP|INIT_SHARED", MMAP | INIT_SHARED), ("none", 0)):
            p.row(f"1/gmem_flags/{where}/{label}", p.outcome(_create_close, vm, 4 * P, flags))
        for size in (0, 100, 4097):
            p.row(f"1/gmem_size/{where}/size{size}", p.outcome(_create_close, vm, size, 0))
        p.row(f"1/gmem_reserved/{where}", p.outcome(_create_close, vm, 4 * P, 0, (1,)))
    for vm in vms.values():
        vm.close()


def _create_close(vm: Any, size: int, flags: int, reserved: tuple[int, ...] = ()) -> None:
    vm.create_guest_memfd(size, flags, reserved).close()


# -- 2. KVM_SET_MEMORY_ATTRIBUTES on the VM fd ------------------------------------------------------------------

def _struct_in_memory(p: Probe, data: bytes) -> Any:
    """An anonymous page holding an ioctl argument, so the call gets a real user pointer and what the kernel
    writes back can be read afterwards."""
    page = p.system.mmap_anonymous(P)
    page.write(0, data)
    return page


def raw_attrs2(p: Probe, target: Any, number: int = KVM_SET_MEMORY_ATTRIBUTES2) -> str:
    """The 128-byte struct (canary in error_offset) through a raw ioctl on ``target``: errno and the field."""
    page = _struct_in_memory(p, struct.pack("<16Q", 0, P, PRIVATE, 0, CANARY, *([0] * 11)))
    head = p.outcome(target.ioctl, number, page.address)
    after = struct.unpack("<Q", page.read(32, 8))[0]
    page.munmap()
    return f"{head}, {'error_offset untouched' if after == CANARY else f'error_offset {after:#x}'}"


def section2(p: Probe) -> None:
    vm = p.system.create_vm(SWP)
    anon = p.system.mmap_anonymous(16 * P)
    p.row("2/slot", p.outcome(vm.set_user_memory_region2, 0, 0, p.base, 16 * P, anon.address))
    a = 0x2000
    for row, args in (
        ("ok", (a, P, PRIVATE)), ("ok_shared", (a, P, 0)), ("flags1", (a, P, PRIVATE, 1)), ("attr_bit0", (a, P, 1)),
        ("attr_bit4", (a, P, 0x10)), ("attr_bit63", (a, P, 1 << 63)), ("size0", (a, 0, PRIVATE)),
        ("addr_unaligned", (0x2001, P, PRIVATE)), ("size_unaligned", (a, 0x1001, PRIVATE)),
        ("wrap", ((1 << 64) - P, 2 * P, PRIVATE)), ("wrap_exact_end", ((1 << 64) - P, P, PRIVATE)),
        ("beyond_memslots_4G", (1 << 32, P, PRIVATE)), ("beyond_memslots_2^51", (1 << 51, P, PRIVATE)),
        ("beyond_memslots_back", (1 << 32, P, 0)), ("straddle_slot_end", (0xF000, 2 * P, PRIVATE)),
        ("partial_2of4", (0x3000, 2 * P, PRIVATE)), ("partial_1_back", (0x3000, P, 0)),
        ("noop_shared_on_shared", (0x8000, P, 0)), ("pair_flags+attr", (a, P, 1, 1)),
        ("pair_flags+size0", (a, 0, PRIVATE, 1)), ("pair_attr+size0", (a, 0, 1)),
        ("pair_size0+unaligned", (0x2001, 0, PRIVATE)), ("pair_wrap+unaligned", ((1 << 64) - 11, P, PRIVATE)),
        ("pair_unaligned+beyond", ((1 << 32) + 1, P, PRIVATE)),
    ):
        p.row(f"2/swp/{row}", p.outcome(vm.set_memory_attributes, *args))
    p.row("2/swp/bad_pointer", p.outcome(vm.ioctl, KVM_SET_MEMORY_ATTRIBUTES, 0x10))
    p.row("2/swp/beyond_memslots_16MiB", p.outcome(vm.set_memory_attributes, 8 << 30, 4096 * P, PRIVATE))
    p.row("2/swp/attrs2_on_vmfd", raw_attrs2(p, vm))
    default = p.system.create_vm(DEFAULT)
    for row, args in (("private", (a, P, PRIVATE)), ("zero", (a, P, 0)), ("bit0", (a, P, 1)),
                      ("size0_attr0", (a, 0, 0))):
        p.row(f"2/default/{row}", p.outcome(default.set_memory_attributes, *args))
    default.close()
    vm.close()
    anon.munmap()


# -- 3. KVM_SET_MEMORY_ATTRIBUTES2 on the guest_memfd fd ---------------------------------------------------------

def section3(p: Probe) -> None:
    swp = p.system.create_vm(SWP)
    default = p.system.create_vm(DEFAULT)
    p.row("3/init_shared_swp", p.outcome(_create_close, swp, 16 * P, MMAP | INIT_SHARED))
    p.row("3/init_shared_only_swp", p.outcome(_create_close, swp, 16 * P, INIT_SHARED))
    g0 = swp.create_guest_memfd(16 * P, 0)
    p.row("3/attrs2_gmem_private_default", p.attrs2(g0, 0, P, PRIVATE))
    p.row("3/attrs2_vmfd", raw_attrs2(p, swp))
    p.row("3/attrs2_devkvm", raw_attrs2(p, p.system))
    memfd = p.system.memfd_create(16 * P)
    p.row("3/attrs2_memfd", raw_attrs2(p, memfd))
    memfd.close()
    p.row("3/old_vm_ioctl_swp", p.outcome(swp.set_memory_attributes, 0, P, PRIVATE))
    p.row("3/old_vm_ioctl_swp_zero", p.outcome(swp.set_memory_attributes, 0, P, 0))
    p.row("3/attrs2_32byte_on_gmem", raw_attrs2(p, g0, KVM_SET_MEMORY_ATTRIBUTES))
    gd = default.create_guest_memfd(64 * P, MMAP | INIT_SHARED)
    p.row("3/attrs2_default_vm_private", p.attrs2(gd, 0, P, PRIVATE))
    p.row("3/attrs2_default_vm_zero", p.attrs2(gd, 0, P, 0))
    p.row("3/attrs2_bad_pointer", p.outcome(g0.ioctl, KVM_SET_MEMORY_ATTRIBUTES2, 0x10))
    g0.close()
    mode = p.mode()
    if mode != "inplace":
        p.row("3/skipped", f"skipped: in-place conversion not offered (mode {mode})")
        gd.close()
        default.close()
        swp.close()
        return
    _section3_in_place(p, swp, gd)
    gd.close()
    default.close()
    swp.close()


def _section3_in_place(p: Probe, swp: Any, gd: Any) -> None:
    g = swp.create_guest_memfd(16 * P, MMAP | INIT_SHARED)
    arg_rows: list[tuple[str, tuple[int, int, int], dict[str, Any]]] = [
        ("ok_private", (0, P, PRIVATE), {}), ("ok_shared", (0, P, 0), {}), ("noop_shared_again", (0, P, 0), {}),
        ("s2_flags1", (0, P, PRIVATE), {"flags": 1}), ("s2_flags_bit63", (0, P, PRIVATE), {"flags": 1 << 63}),
        ("s3_reserved0", (0, P, PRIVATE), {"reserved": (1,)}),
        ("s3_reserved10", (0, P, PRIVATE), {"reserved": (0,) * 10 + (1,)}),
        ("s5_attr_bit0", (0, P, 1), {}), ("s5_attr_private_plus_bit0", (0, P, 9), {}),
        ("s5_attr_bit63", (0, P, 1 << 63), {}), ("s6_size0", (0, 0, PRIVATE), {}),
        ("s6_wrap", ((1 << 64) - P, 2 * P, PRIVATE), {}), ("s7_off_unaligned", (0x64, P, PRIVATE), {}),
        ("s7_size_unaligned", (0, 0x1001, PRIVATE), {}), ("s8_off_eq_isize", (0x10000, P, PRIVATE), {}),
        ("s8_off_gt_isize", (0x11000, P, PRIVATE), {}), ("s8_end_gt_isize", (0xF000, 2 * P, PRIVATE), {}),
        ("s8_whole_file", (0, 0x10000, 0), {}), ("s8_end_eq_isize_private", (0xF000, P, PRIVATE), {}),
        ("s8_end_eq_isize_back", (0xF000, P, 0), {}), ("s8_huge_size", (0, 1 << 62, PRIVATE), {}),
    ]
    for row, args, kwargs in arg_rows:
        p.row(f"3/arg/{row}", p.attrs2(g, *args, **kwargs))
    default_pairs: list[tuple[str, tuple[int, int, int], dict[str, Any]]] = [
        ("s4+s2_flags", (0, P, PRIVATE), {"flags": 1}), ("s4+s3_reserved", (0, P, PRIVATE), {"reserved": (1,)}),
        ("s4+s5_attr", (0, P, 1), {}), ("s4+s6_size0", (0, 0, PRIVATE), {}),
        ("s4+s8_eof", (0x40000, P, PRIVATE), {}), ("s4_shared_noop", (0, P, 0), {}),
    ]
    for row, args, kwargs in default_pairs:
        p.row(f"3/pair_default_vm/{row}", p.attrs2(gd, *args, **kwargs))
    pairs: list[tuple[str, tuple[int, int, int], dict[str, Any]]] = [
        ("s2+s3", (0, P, PRIVATE), {"flags": 1, "reserved": (1,)}), ("s5+s6", (0, 0, 1), {}),
        ("s6+s7", (1, 0, PRIVATE), {}), ("s7+s8", (0x10001, P, PRIVATE), {}),
        ("s6wrap+s7", ((1 << 64) - 0x65, P, PRIVATE), {}),
    ]
    for row, args, kwargs in pairs:
        p.row(f"3/pair/{row}", p.attrs2(g, *args, **kwargs))
    g.close()
    _section3_host(p, swp)


def _section3_host(p: Probe, swp: Any) -> None:
    g = swp.create_guest_memfd(16 * P, MMAP | INIT_SHARED)
    m = g.mmap(16 * P)
    m.fill(0, P, 0xA0)  # "written 0xa0 before" (3/host/contents_after_roundtrip)
    p.row("3/host/shared_read", p.host_read(m, 0))
    p.row("3/host/shared_write", p.host_write(m, P, 0x3C))
    p.row("3/host/pagemap_before", "present" if m.pte_present(0) else "not present")
    p.row("3/conv/mapped_faulted", p.attrs2(g, 0, P, PRIVATE))
    p.row("3/host/pagemap_after_private", "present" if m.pte_present(0) else "not present")
    p.row("3/host/private_read", p.host_read(m, 0))
    p.row("3/host/private_write", p.host_write(m, 0, 0x11))
    p.row("3/host/neighbour_shared", p.host_read(m, P))
    p.row("3/conv/noop_private", p.attrs2(g, 0, P, PRIVATE))
    p.row("3/conv/back_shared", p.attrs2(g, 0, P, 0))
    p.row("3/host/contents_after_roundtrip", p.host_read(m, 0))
    result = p.attrs2(g, 0, P, 0)
    p.row("3/conv/noop_shared_pagemap", f"{result}; pagemap after: {'present' if m.pte_present(0) else 'not present'}")
    g.set_memory_attributes2(3 * P, P, PRIVATE)  # "pages 2-4 (3 private, 2,4 shared)"
    p.row("3/conv/mixed_to_private", p.attrs2(g, 2 * P, 3 * P, PRIVATE))
    p.row("3/conv/mixed_to_shared", p.attrs2(g, 2 * P, 3 * P, 0))
    before = g.fstat().st_blocks
    first, second = p.attrs2(g, 8 * P, 8 * P, PRIVATE), p.attrs2(g, 8 * P, 4 * P, 0)
    p.row("3/unalloc/convert", f"{first}; {second} — st_blocks before {before} after {g.fstat().st_blocks}")
    p.row("3/unalloc/read_shared", p.host_read(m, 8 * P))
    p.row("3/unalloc/read_private", p.host_read(m, 12 * P))
    p.row("3/fallocate/mode0", p.outcome(g.fallocate, 0, 0, P))
    m.munmap()
    g.close()

    g = swp.create_guest_memfd(16 * P, MMAP | INIT_SHARED)
    m = g.mmap(16 * P)
    g.set_memory_attributes2(4 * P, 4 * P, PRIVATE)
    p.row("3/fallocate/private_range", f"{p.outcome(g.fallocate, KEEP, 0, 8 * P)} — st_blocks after "
          f"{g.fstat().st_blocks}")
    p.row("3/fallocate/read_private_after", p.host_read(m, 5 * P))
    p.row("3/fallocate/read_shared_after", p.host_read(m, P))
    punched = p.outcome(g.fallocate, PUNCH, 4 * P, P)
    p.row("3/punch/private", p.host_read(m, 4 * P) if punched == "ok" else f"fallocate={punched}")
    back = p.attrs2(g, 4 * P, P, 0)
    p.row("3/punch/private_back", f"{back}; read {p.host_read(m, 4 * P)}")
    m.write(2 * P, b"\x22")
    punched = p.outcome(g.fallocate, PUNCH, 2 * P, P)
    p.row("3/punch/shared", p.host_read(m, 2 * P) if punched == "ok" else f"fallocate={punched}")
    punched = p.outcome(g.fallocate, PUNCH, 8 * P, 8 * P)
    cell = f"{p.attrs2(g, 8 * P, 8 * P, PRIVATE)}; {p.attrs2(g, 8 * P, 8 * P, 0)}"
    p.row("3/punch/unalloc_then_convert", cell if punched == "ok" else f"fallocate={punched}")
    p.row("3/ftruncate", "refused" if p.outcome(g.ftruncate, 8 * P) != "ok" else "ok")
    for what, touch in (("read", lambda cm: cm.read(9 * P, 1)), ("write", lambda cm: cm.write(9 * P, b"\x09"))):
        child = p.system.fork()
        cm = child.mapping(m)
        cm.read(9 * P, 1)  # the child faults page 9 while it is shared
        converted = p.attrs2(g, 9 * P, P, PRIVATE)
        cell = "signal SIGBUS" if p.outcome(touch, cm) == "SIGBUS" else "no signal"
        p.row(f"3/fork/child_{what}_after_conversion",
              cell if converted == "ok, error_offset untouched" else f"conversion={converted}")
        child.exit()
        g.set_memory_attributes2(9 * P, P, 0)
    p.row("3/mmap_private", p.outcome(g.mmap, P, 0, 3, 0x02))
    m.munmap()
    g.close()


# -- 4. Guest side ----------------------------------------------------------------------------------------------

class Layout:
    """Slot 0: anonymous memory at GPA 0-0x1fff (the probe's code); slot 1: GPA 0x2000-0x5fff bound to a 4-page
    gmem at offset 0 with ``userspace_addr`` = anonymous memory of 0x99 (or the gmem's own mapping)."""

    def __init__(self, p: Probe, gmem_flags: int, uaddr: str = "anon", vm_type: int = SWP,
                 with_gmem: bool = True) -> None:
        self.p = p
        self.vm = p.system.create_vm(vm_type)
        self.code = p.system.mmap_anonymous(2 * P)
        self.anon = p.system.mmap_anonymous(4 * P)
        if uaddr == "anon":
            self.anon.fill(0, 4 * P, UA)
        self.setup: list[str] = []
        self.gmem: Any = None
        self.map: Any = None
        try:
            self.setup.append("slot0 " + p.outcome(self.vm.set_user_memory_region2, 0, 0, p.base, 2 * P,
                                                   self.code.address))
            if with_gmem:
                self.gmem = self.vm.create_guest_memfd(4 * P, gmem_flags)
                if gmem_flags & MMAP:
                    self.map = self.gmem.mmap(4 * P)
            address = self.map.address if uaddr == "gmem" else self.anon.address
            flags = KVM_MEM_GUEST_MEMFD if with_gmem else 0
            self.setup.append("slot1 " + p.outcome(self.vm.set_user_memory_region2, 1, flags, p.base + 0x2000,
                                                   4 * P, address, self.gmem, 0))
        except KvmError as exc:
            self.setup.append(f"KVM_CREATE_GUEST_MEMFD(size={4 * P:#x} flags={gmem_flags:#x}): {exc.errname}")
            self.failed = self.setup[-1]
            return
        self.failed = ""
        self.cpu = self.vm.create_vcpu(0)

    def attrs(self, mode: str, gpa: int, size: int, private: bool) -> str:
        """A conversion the way the probe made it in this mode: ATTRIBUTES2 on the gmem (inplace) or the VM
        ioctl (vmattrs, and ENOTTY in mode none)."""
        if mode == "inplace":
            return self.p.attrs2(self.gmem, gpa - 0x2000, size, PRIVATE if private else 0)
        return self.p.outcome(self.vm.set_memory_attributes, self.p.base + gpa, size, PRIVATE if private else 0)

    def read(self, *gpas: int) -> str:
        return self.p.guest_read(self.cpu, list(gpas))

    def anon_byte(self, page: int) -> str:
        return f"{self.anon.read(page * P, 1)[0]:#04x}"

    def close(self) -> None:
        if not self.failed:
            self.cpu.close()
        if self.map is not None:
            self.map.munmap()
        if self.gmem is not None:
            self.gmem.close()
        self.vm.close()
        self.code.munmap()
        self.anon.munmap()


def section4(p: Probe) -> None:
    mode = p.mode()
    p.row("4/mode", mode)
    _section4a(p, mode)
    _section4b(p, mode)
    _section4d(p, mode)
    _section4e(p, mode)
    _section4c(p, mode)


def _section4a(p: Probe, mode: str) -> None:
    inplace = mode == "inplace"
    lay = Layout(p, MMAP | INIT_SHARED if inplace else 0)
    p.row("4a/setup", ", ".join(lay.setup))
    if inplace:  # the host first writes 0x70+i into page i
        p.row("4a/gmem_filled", p.outcome(lambda: [lay.map.fill(i * P, P, 0x70 + i) for i in range(4)]))
    p.row("4a/read_shared", lay.read(0x2000))
    p.row("4a/convert_private_mapped", lay.attrs(mode, 0x2000, P, True))
    p.row("4a/read_private_after_conv", lay.read(0x2000))
    if inplace:
        p.row("4a/host_read_private", p.host_read(lay.map, 0))
    p.row("4a/write_private", p.guest_write_read(lay.cpu, 0x2000, 0x42))
    p.row("4a/ua_after_private_write", lay.anon_byte(0))
    p.row("4a/convert_shared", lay.attrs(mode, 0x2000, P, False))
    if inplace:
        p.row("4a/host_read_after_shared", p.host_read(lay.map, 0))
    p.row("4a/read_after_shared", lay.read(0x2000))
    p.row("4a/convert_private_again", lay.attrs(mode, 0x2000, P, True))
    p.row("4a/read_private_again", lay.read(0x2000))
    p.row("4a/partial", f"{lay.attrs(mode, 0x3000, 2 * P, True)}; {lay.attrs(mode, 0x4000, P, False)}")
    p.row("4a/partial_reads", lay.read(0x3000, 0x4000, 0x5000))
    lay.cpu.write(p.base + 0x3000, b"\x33")
    blocks = [lay.gmem.fstat().st_blocks]
    punched = p.outcome(lay.gmem.fallocate, PUNCH, P, P)
    blocks.append(lay.gmem.fstat().st_blocks)
    p.row("4a/punch_private", lay.read(0x3000) if punched == "ok" else f"fallocate={punched}")
    p.row("4a/exec_private_guest_written", p.guest_execute(lay.cpu, 0x3000, 0x55, write=True))
    if inplace:  # the host writes the code into shared page 2 (GPA 0x4000) through the gmem mapping
        lay.map.write(2 * P, report_stub(0x55))
        p.row("4a/exec_shared_gmem", p.guest_execute(lay.cpu, 0x4000, 0x55))
        converted = lay.attrs(mode, 0x4000, P, True)
        p.row("4a/exec_host_written_then_private", f"{converted}; {p.guest_execute(lay.cpu, 0x4000, 0x55)}")
    p.row("4a/prefault_private", p.pre_fault(lay.cpu, 0x2000, P))
    cell = p.pre_fault(lay.cpu, 0x3000, 3 * P)  # from the punched private page 0x3000 to the slot's end
    blocks.append(lay.gmem.fstat().st_blocks)
    p.row("4a/prefault_private_unallocated",
          f"{cell} — st_blocks before punch {blocks[0]}, after punch {blocks[1]}, after pre-fault {blocks[2]}")
    p.row("4a/prefault_shared", p.pre_fault(lay.cpu, 0x5000, P))
    p.row("4a/prefault_code", p.pre_fault(lay.cpu, 0x1000, P))
    p.row("4a/prefault_noslot", p.pre_fault(lay.cpu, 0x100000, P))
    p.row("4a/prefault_span", p.pre_fault(lay.cpu, 0x1000, 5 * P))
    p.row("4a/prefault_unaligned", p.pre_fault(lay.cpu, 0x1001, P))
    p.row("4a/prefault_flags", p.pre_fault(lay.cpu, 0x1000, P, flags=1))
    p.row("4a/prefault_size0", p.pre_fault(lay.cpu, 0x1000, 0))
    lay.close()


def _section4b(p: Probe, mode: str) -> None:
    """A private GFN in a slot without gmem: zero-filled anonymous memory at 0x2000 (the flip back reads 0)."""
    if mode != "vmattrs":
        p.row("4b/memfault", f"not reachable: no per-VM attributes in mode {mode} (private state lives in gmem)")
        return
    lay = Layout(p, 0, uaddr="zero", with_gmem=False)
    set_attrs = lay.attrs(mode, 0x2000, P, True)
    p.row("4b/memfault", f"{lay.read(0x2000)} (set_attrs={set_attrs})")
    try:
        lay.cpu.write(p.base + 0x2000, b"\x01")
        cell = "no exit"
    except VcpuExit as exc:
        cell = p.exit_cell(exc)
    p.row("4b/memfault_write", cell)
    p.row("4b/memfault_exec", p.guest_execute(lay.cpu, 0x2000, 0x55))
    lay.attrs(mode, 0x2000, 2 * P, True)
    p.row("4b/memfault_second_page", lay.read(0x2FFE))
    lay.attrs(mode, 0x2000, 2 * P, False)
    p.row("4b/after_flip_shared", lay.read(0x2FFE))
    lay.attrs(mode, 0x2000, P, True)
    p.row("4b/prefault_private_no_gmem", p.pre_fault(lay.cpu, 0x2000, P))
    lay.close()


def _section4d(p: Probe, mode: str) -> None:
    """gmem without MMAP bound with userspace_addr = anon 0x99, GPA 0x2000 shared (converted shared first in
    mode inplace, where such a file starts private)."""
    for row, flags in (("flags0", 0), ("init_shared_no_mmap", INIT_SHARED)):
        lay = Layout(p, flags)
        if lay.failed:
            p.row(f"4d/{row}", lay.failed)
        else:
            converted = lay.attrs(mode, 0x2000, P, False) if mode == "inplace" else "n/a"
            p.row(f"4d/{row}", f"{lay.read(0x2000)} (convert_shared={converted})")
        lay.close()


def _section4e(p: Probe, mode: str) -> None:
    """A gmem without MMAP (flags 0; what makes B read userspace_addr after the close) made private at
    0x2000-0x3fff; the guest writes 0x42 at 0x2000; the fd is closed while the slot stays."""
    lay = Layout(p, 0)
    if mode == "vmattrs":
        lay.attrs(mode, 0x2000, 2 * P, True)
    p.row("4e/before_close", p.guest_write_read(lay.cpu, 0x2000, 0x42))
    lay.gmem.close()
    lay.gmem = None
    p.row("4e/after_close_mapped", lay.read(0x2000))
    p.row("4e/after_close_unmapped", lay.read(0x3000))
    lay.close()


def _section4c(p: Probe, mode: str) -> None:
    """Slot 1's userspace_addr is the gmem's own mapping; the gmem is MMAP, with INIT_SHARED where the VM
    allows it (B: the host reads the page)."""
    vm = p.system.create_vm(SWP)
    flags = MMAP | (vm.check_extension(Cap.GUEST_MEMFD_FLAGS) & INIT_SHARED)
    vm.close()
    lay = Layout(p, flags, uaddr="gmem")
    p.row("4c/setup", lay.setup[1])
    p.row("4c/read_shared", lay.read(0x2000))
    p.row("4c/write_shared", p.guest_write_read(lay.cpu, 0x2000, 0x21))
    p.row("4c/host_read_shared", p.host_read(lay.map, 0))
    p.row("4c/convert_private", lay.attrs(mode, 0x2000, P, True))
    p.row("4c/read_private", lay.read(0x2000))
    lay.close()


# -- 5. Memslot binding -------------------------------------------------------------------------------------------

def section5(p: Probe) -> None:
    vm = p.system.create_vm(SWP)
    g = vm.create_guest_memfd(16 * P, 0)
    ua = p.system.mmap_anonymous(16 * P)
    gm = KVM_MEM_GUEST_MEMFD

    def bind(slot: int, gpa: int, size: int, goff: int, flags: int = gm, fd: Any = g, uaddr: int | None = None,
             target: Any = vm) -> str:
        address = ua.address if uaddr is None else uaddr
        return p.outcome(target.set_user_memory_region2, slot, flags, gpa, size, address, fd, goff)

    for row, args in (("goff_unaligned", (0, 0, 0x4000, 0x64)), ("goff_end_past_size", (0, 0, 0x4000, 0xE000)),
                      ("goff_eq_size", (0, 0, 0x4000, 0x10000)),
                      ("goff_overflow", (0, 0, 0x4000, 0xFFFFFFFFFFFFF000)),
                      ("goff_2^63", (0, 0, 0x4000, 1 << 63)), ("size_past_gmem", (0, 0, 0x20000, 0)),
                      ("ok_0-3", (0, 0, 0x4000, 0)), ("overlap_same_range", (1, 0x10000, 0x4000, 0)),
                      ("overlap_partial", (1, 0x10000, 0x4000, 0x2000)),
                      ("overlap_last_page", (1, 0x10000, 0x4000, 0x3000)),
                      ("same_gmem_disjoint", (1, 0x10000, 0x4000, 0x4000)),
                      ("same_gmem_third", (2, 0x20000, 0x4000, 0x8000)),
                      ("gpa_overlap_other_slot", (3, 0x1000, 0x1000, 0xC000)),
                      ("as1_smm", (0x10004, 0, 0x4000, 0xC000)),
                      ("as1_smm_overlap_as0_binding", (0x10005, 0x40000, 0x4000, 0)),
                      ("as2", (0x20006, 0, 0x1000, 0xC000))):
        p.row(f"5/bind/{row}", bind(*args))
    p.row("5/bind/uaddr_zero", bind(7, 0x80000, 0x1000, 0xD000, uaddr=0))
    p.row("5/bind/delete_slot1", p.outcome(vm.set_user_memory_region2, 1, 0, 0x10000, 0))
    p.row("5/bind/rebind_after_delete", bind(8, 0x90000, 0x4000, 0x4000))
    p.row("5/bind/move_gmem_slot", bind(8, 0xA0000, 0x4000, 0x4000))
    p.row("5/bind/change_flags", bind(8, 0x90000, 0x4000, 0x4000, flags=gm | KVM_MEM_LOG_DIRTY_PAGES))
    p.row("5/bind/readonly", bind(9, 0xB0000, 0x1000, 0xE000, flags=gm | KVM_MEM_READONLY))
    other = p.system.create_vm(SWP)
    g_other = other.create_guest_memfd(16 * P, 0)
    p.row("5/bind/other_vm_gmem", bind(10, 0xC0000, 0x1000, 0, fd=g_other))
    memfd = p.system.memfd_create(16 * P)
    p.row("5/bind/not_gmem_fd", bind(10, 0xC0000, 0x1000, 0, fd=memfd))
    p.row("5/bind/bad_fd", bind(10, 0xC0000, 0x1000, 0, fd=9999))
    default = p.system.create_vm(DEFAULT)
    gd = default.create_guest_memfd(16 * P, MMAP | INIT_SHARED)
    gd0 = default.create_guest_memfd(16 * P, 0)
    p.row("5/bind/default_vm", bind(0, 0, 0x4000, 0, fd=gd, target=default))
    p.row("5/bind/default_vm_noflags", bind(1, 0x10000, 0x4000, 0, fd=gd0, target=default))
    p.row("5/bind/as1_plain_swp", bind(0x10001, 0x100000, 0x4000, 0, flags=0))
    p.row("5/bind/as1_gmem_default_vm", bind(0x10002, 0, 0x4000, 0, fd=gd, target=default))
    p.row("5/bind/as1_plain_default_vm", bind(0x10003, 0x100000, 0x4000, 0, flags=0, target=default))
    for obj in (gd, gd0, g_other, g, memfd):
        obj.close()
    for obj in (default, other, vm):
        obj.close()
    ua.munmap()
    _section5_gmem_only(p)


def _section5_gmem_only(p: Probe) -> None:
    """The section-4 layout with slot 1's gmem of the given flags and userspace_addr = anon 0x99."""
    for label, vm_type, flags in (("default_vm", DEFAULT, MMAP | INIT_SHARED), ("swp_vm", SWP, MMAP),
                                  ("swp_vm_noflags", SWP, 0), ("swp_vm_init_shared", SWP, MMAP | INIT_SHARED)):
        lay = Layout(p, flags, vm_type=vm_type)
        if lay.failed:
            p.row(f"5/gmem_only/{label}", lay.failed)
            lay.close()
            continue
        if flags & MMAP:
            p.row(f"5/gmem_only/{label}/host_write", p.host_write(lay.map, 0, 0x71))
        read = lay.read(0x2000)
        bind_note = " (bind=ok)" if label == "swp_vm_init_shared" else ""
        p.row(f"5/gmem_only/{label}", read + bind_note)
        written = p.guest_write_read(lay.cpu, 0x2000, 0x5E)
        p.row(f"5/gmem_only/{label}/write", f"{written}; anon {lay.anon_byte(0)}")
        lay.close()


# -- 6. Generic file behaviour --------------------------------------------------------------------------------------

def section6(p: Probe) -> None:
    for where, vm_type in (("default_vm", DEFAULT), ("swp_vm", SWP)):
        vm = p.system.create_vm(vm_type)
        if not vm.check_extension(Cap.GUEST_MEMFD_FLAGS) & INIT_SHARED:
            vm.close()
            continue  # these rows run only where the VM may use INIT_SHARED
        g = vm.create_guest_memfd(4 << 20, MMAP | INIT_SHARED)
        try:
            m = g.mmap(2 << 20)
            p.row(f"6/{where}/mmap_2m_aligned", "ok")
        except KvmError as exc:
            p.row(f"6/{where}/mmap_2m_aligned", exc.errname)
            continue
        m.fill(0, 2 << 20, 0x61)  # fully faulted
        p.row(f"6/{where}/madv_hugepage", p.outcome(m.madvise, 0, 2 << 20, MADV_HUGEPAGE))
        p.row(f"6/{where}/madv_collapse", p.outcome(m.madvise, 0, 2 << 20, MADV_COLLAPSE))
        p.row(f"6/{where}/mbind", p.outcome(m.mbind, 0, 2 << 20, MPOL_BIND, 0x1))
        try:
            p.row(f"6/{where}/get_mempolicy", f"ok (mode {m.get_mempolicy(0)[0]})")
        except KvmError as exc:
            p.row(f"6/{where}/get_mempolicy", exc.errname)
        first = p.outcome(vm.set_user_memory_region2, 1, KVM_MEM_GUEST_MEMFD, 1 << 32, 4 * P, 0, g, 0)
        second = p.outcome(vm.set_user_memory_region2, 2, KVM_MEM_GUEST_MEMFD, 2 << 32, 4 * P, 0, g, 2 * P)
        p.row(f"6/{where}/overlap_binding", f"first {first}, overlapping {second}")
        m.munmap()
        g.close()
        vm.close()


SECTIONS: tuple[tuple[str, Callable[[Probe], None]], ...] = (
    ("1", section1), ("2", section2), ("3", section3), ("4", section4), ("5", section5), ("6", section6),
)

