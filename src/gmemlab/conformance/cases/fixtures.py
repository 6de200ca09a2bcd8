"""Fixtures the RFC v2 and HugeTLB cases share: the capability gate, the 3.5 file battery and the 3.6
conversion setup (a SW_PROTECTED VM, a SUPPORT_SHARED gmem mmapped MAP_SHARED as the userspace_addr of
slot 10 at GPA 4 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...uapi import KVM_MEM_GUEST_MEMFD, Cap, VmType
from ..case import Ctx
from ..constants import INIT_PRIVATE, PUNCH, SUPPORT_SHARED, P
from ..record import Proxy


def need_conversion(ctx: Ctx) -> None:
    ctx.require_cap(Cap.GMEM_SHARED_MEM)
    ctx.require_cap(Cap.GMEM_CONVERSION)


def rfc_battery(ctx: Ctx) -> list[tuple[Proxy, int]]:
    ctx.require_cap(Cap.GMEM_SHARED_MEM)
    out = []
    for vm_type in (VmType.DEFAULT, VmType.SW_PROTECTED):
        if vm_type not in ctx.system.vm_types():
            continue
        vm = ctx.system.create_vm(int(vm_type))
        out += [(vm, 0), (vm, SUPPORT_SHARED)]
    if not out:
        ctx.skip("needs a default or SW_PROTECTED VM")
    return out


@dataclass
class ConversionSetup:
    """The 3.6 fixture: a SW_PROTECTED VM, a SUPPORT_SHARED gmem mmapped as slot 10's userspace_addr.

    Offsets given to the helpers are in ``unit`` bytes: 4 KiB page numbers for the 4 KiB cases, plain
    byte offsets (``unit`` 1) for the HugeTLB ones; ``ps`` is the backing page size.
    """

    vm: Proxy
    gmem: Proxy
    mapping: Proxy
    cpu: Proxy
    gpa: int
    unit: int = P
    ps: int = P

    def host(self, ctx: Ctx, at: int, expect: bytes | None = None, write: bytes | None = None) -> None:
        """host_use_memory: check then write one byte at ``at``."""
        off = at * self.unit
        if expect is not None:
            ctx.expect_bytes(self.mapping.read(off, 1), expect, f"host read at {off:#x}")
        if write is not None:
            self.mapping.write(off, write)

    def guest(self, ctx: Ctx, at: int, expect: bytes | None = None, write: bytes | None = None) -> None:
        off = at * self.unit
        if expect is not None:
            ctx.expect_bytes(self.cpu.read(self.gpa + off, 1), expect, f"guest read at {off:#x}")
        if write is not None:
            self.cpu.write(self.gpa + off, write)

    def host_cannot_fault(self, ctx: Ctx, at: int) -> None:
        ctx.expect_sigbus(self.mapping.write, at * self.unit, b"Z")

    def convert(self, ctx: Ctx, at: int, count: int, to_shared: bool) -> None:
        ctx.expect_ok(self.gmem.convert, at * self.unit, count * self.unit, to_shared)

    def close(self) -> None:
        self.mapping.munmap()
        self.cpu.close()
        self.gmem.close()


def conversion_setup(ctx: Ctx, npages: int, init_private: bool = False, page_size: int = P, extra_flags: int = 0,
                     unit: int = P) -> ConversionSetup:
    """``setup_test`` of the conversions selftest with ``npages`` pages of ``page_size``."""
    need_conversion(ctx)
    vm = ctx.vm(int(VmType.SW_PROTECTED))
    flags = SUPPORT_SHARED | extra_flags | (INIT_PRIVATE if init_private else 0)
    size = npages * page_size
    g = vm.create_guest_memfd(size, flags)
    m = g.mmap(size)
    gpa = ctx.gpa_base(size)
    ctx.expect_ok(vm.set_user_memory_region2, 10, KVM_MEM_GUEST_MEMFD, gpa, size, userspace_addr=m.address,
                  guest_memfd=g, guest_memfd_offset=0)
    return ConversionSetup(vm, g, m, vm.create_vcpu(0), gpa, unit, page_size)


def truncate_keeps_mappability(ctx: Ctx, s: ConversionSetup) -> None:
    """``test_truncate_should_not_change_mappability`` on page 0 of ``s`` (4 KiB or huge): punching keeps
    shareability, so a shared page re-faults zero and a private page stays host-unfaultable."""
    page = s.ps  # the page in bytes, and in the fixture's units below
    s.host(ctx, 0, write=b"A")
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, page)
    s.host(ctx, 0, b"\x00", b"A")
    s.convert(ctx, 0, page // s.unit, False)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, b"A")
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, page)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, write=b"B")
    s.close()
