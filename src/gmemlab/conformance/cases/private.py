"""Private memory on SW_PROTECTED VMs (``KVM_X86_SW_PROTECTED_VM``), written once for the model and any kernel
that offers VM type 1 (issue 15 item 4; spec 2.6-2.8, 3.2-3.4; realkernel-private.md column A).

The layout follows the recorded probe: a guest_memfd bound to a memslot whose ``userspace_addr`` is anonymous
memory filled with 0x99, so a guest read of 0x99 came from ``userspace_addr`` (the shared view) and anything
else from guest_memfd (the private view, or every view of a gmem-only MMAP slot). Memory attributes are the
per-VM array (``KVM_SET_MEMORY_ATTRIBUTES``); a SW_PROTECTED guest's access is private exactly where the
attribute says so, so every access here lets KVM decide (``private=None``).
"""

from __future__ import annotations

from ...uapi import (
    KVM_EXIT_MEMORY_FAULT,
    KVM_EXIT_MMIO,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
    Cap,
    VmType,
)
from ..case import CaseList, Ctx
from ..constants import PUNCH, P
from ..record import Proxy

CASES = CaseList()
case = CASES.case

PRIVATE = KVM_MEMORY_ATTRIBUTE_PRIVATE
UA_BYTE = 0x99  # what userspace_addr holds in every page
NPAGES = 4


def swp_vm(ctx: Ctx) -> Proxy:
    types = ctx.system.check_extension(Cap.VM_TYPES)
    if not types & 1 << VmType.SW_PROTECTED:
        ctx.skip(f"needs KVM_X86_SW_PROTECTED_VM (type 1): KVM_CAP_VM_TYPES = {types:#x} here")
    vm = ctx.vm(int(VmType.SW_PROTECTED))
    ctx.require_cap(Cap.MEMORY_ATTRIBUTES, on=vm, mask=PRIVATE)
    return vm


class Layout:
    """SW_PROTECTED VM, a ``NPAGES`` gmem bound at ``gpa``, userspace_addr = anonymous memory of 0x99."""

    def __init__(self, ctx: Ctx, gmem_flags: int = 0, uaddr: str = "anon") -> None:
        self.ctx = ctx
        self.vm = swp_vm(ctx)
        size = NPAGES * P
        self.gmem = ctx.expect_ok(self.vm.create_guest_memfd, size, gmem_flags)
        self.anon = ctx.system.mmap_anonymous(size)
        self.anon.fill(0, size, UA_BYTE)
        self.map = self.gmem.mmap(size) if uaddr == "gmem" else None
        address = self.map.address if self.map is not None else self.anon.address
        self.gpa = ctx.gpa_base(size)
        ctx.expect_ok(self.vm.set_user_memory_region2, 1, KVM_MEM_GUEST_MEMFD, self.gpa,
                      size, userspace_addr=address, guest_memfd=self.gmem, guest_memfd_offset=0)
        self.cpu = self.vm.create_vcpu(0)

    def attrs(self, page: int, npages: int, attributes: int) -> None:
        self.ctx.expect_ok(self.vm.set_memory_attributes, self.gpa + page * P, npages * P,
                           attributes)

    def read(self, page: int, offset: int = 0, length: int = 1) -> bytes:
        return self.cpu.read(self.gpa + page * P + offset, length)  # type: ignore[no-any-return]

    def write(self, page: int, data: bytes, offset: int = 0) -> None:
        self.cpu.write(self.gpa + page * P + offset, data)

    def expect_memory_fault(self, page: int, offset: int = 0, write: bool = False) -> None:
        fn = self.write if write else self.read
        args = (page, b"\x01", offset) if write else (page, offset, 1)
        ex = self.ctx.expect_exit(fn, *args)
        self.ctx.check(ex.exit_reason == KVM_EXIT_MEMORY_FAULT, f"expected KVM_EXIT_MEMORY_FAULT, got {ex}")
        want = (self.gpa + page * P, P, KVM_MEMORY_EXIT_FLAG_PRIVATE)
        self.ctx.check((ex.gpa, ex.size, ex.flags) == want, f"memory fault payload {ex}, expected {want}")


@case("2.7")
def private_set_memory_attributes_rules(ctx: Ctx) -> None:
    """KVM_SET_MEMORY_ATTRIBUTES on a SW_PROTECTED VM: PRIVATE and 0 accepted anywhere (memslots do not
    matter, no-ops too); flags, unknown bits, size 0, misalignment and wrap EINVAL, also in pairs
    (realkernel-private.md section 2; finding 1: no order among the EINVALs can be seen)."""
    vm = swp_vm(ctx)
    anon = ctx.system.mmap_anonymous(16 * P)
    base = ctx.gpa_base(16 * P)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, base, 16 * P, userspace_addr=anon.address)
    a = base + 2 * P
    for address, size, attrs in ((a, P, PRIVATE), (a, P, 0), (a + 6 * P, P, 0), (base + 15 * P, 2 * P, PRIVATE),
                                 (base + 3 * P, 2 * P, PRIVATE), (base + 3 * P, P, 0), (1 << 40, P, PRIVATE),
                                 (1 << 51, P, PRIVATE), (1 << 40, P, 0), (8 << 30, 4096 * P, PRIVATE)):
        ctx.expect_ok(vm.set_memory_attributes, address, size, attrs)
    for address, size, attrs, flags in ((a, P, PRIVATE, 1), (a, P, 1, 0), (a, P, 1 << 4, 0), (a, P, 1 << 63, 0),
                                        (a, 0, PRIVATE, 0), (a + 1, P, PRIVATE, 0), (a, P + 1, PRIVATE, 0),
                                        ((1 << 64) - P, 2 * P, PRIVATE, 0), ((1 << 64) - P, P, PRIVATE, 0),
                                        (a, P, 1, 1), (a, 0, PRIVATE, 1), (a, 0, 1, 0), (a + 1, 0, PRIVATE, 0),
                                        ((1 << 64) - 11, P, PRIVATE, 0), ((1 << 32) + 1, P, PRIVATE, 0)):
        ctx.expect_errno("EINVAL", vm.set_memory_attributes, address, size, attrs, flags)
    default = ctx.vm(int(VmType.DEFAULT))
    ctx.check(default.check_extension(Cap.MEMORY_ATTRIBUTES) == 0, "a default VM has no memory attributes")
    for attrs in (PRIVATE, 1):
        ctx.expect_errno("EINVAL", default.set_memory_attributes, a, P, attrs)
    ctx.expect_ok(default.set_memory_attributes, a, P, 0)
    ctx.expect_errno("EINVAL", default.set_memory_attributes, a, 0, 0)


@case("3.2")
def private_vm_memslot_rules(ctx: Ctx) -> None:
    """set_memory_region_test on a SW_PROTECTED VM: only MMAP may be asked of its guest_memfd (no INIT_SHARED:
    KVM_CAP_GUEST_MEMFD_FLAGS = 1); one memslot address space (no SMM for private VMs); GUEST_MEMFD with
    LOG_DIRTY or READONLY EINVAL; file-range overlap EINVAL, GPA overlap EEXIST (finding 11)."""
    vm = swp_vm(ctx)
    ctx.check(vm.check_extension(Cap.GUEST_MEMFD_FLAGS) == ctx.MMAP, "GUEST_MEMFD_FLAGS of a SW_PROTECTED VM")
    spaces = vm.check_extension(Cap.MULTI_ADDRESS_SPACE)
    ctx.check(spaces <= 1, f"a VM with private memory has one address space, KVM_CAP_MULTI_ADDRESS_SPACE={spaces}")
    for flags in (ctx.INIT_SHARED, ctx.MMAP | ctx.INIT_SHARED):
        ctx.expect_errno("EINVAL", vm.create_guest_memfd, 16 * P, flags)
    g = vm.create_guest_memfd(16 * P, 0)
    anon = ctx.system.mmap_anonymous(16 * P)
    gpa = ctx.gpa_base(1 << 22)
    gm = KVM_MEM_GUEST_MEMFD

    def bind(slot: int, flags: int, address: int, size: int, offset: int = 0, fd: object = g) -> None:
        vm.set_user_memory_region2(slot, flags, address, size, userspace_addr=0, guest_memfd=fd,
                                   guest_memfd_offset=offset)

    for bad in (gm | 1, gm | 2):  # LOG_DIRTY_PAGES, READONLY
        ctx.expect_errno("EINVAL", bind, 1, bad, gpa, 4 * P)
    ctx.expect_errno("EINVAL", bind, 1 | 1 << 16, gm, gpa, 4 * P)
    ctx.expect_errno("EINVAL", vm.set_user_memory_region2, 1 | 1 << 16, 0, gpa, 4 * P, userspace_addr=anon.address)
    ctx.expect_ok(bind, 1, gm, gpa, 4 * P)
    ctx.expect_errno("EEXIST" if ctx.since("linux-7.3") else "EINVAL", bind, 2, gm, gpa + (1 << 21), 4 * P,
                     offset=2 * P)  # file-range overlap: EEXIST from 7.2 (linux-7.md 0)
    ctx.expect_ok(bind, 2, gm, gpa + (1 << 21), 4 * P, offset=4 * P)
    ctx.expect_errno("EEXIST", bind, 3, gm, gpa + P, P, offset=12 * P)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa + (1 << 20), 4 * P)  # gmem slots cannot move
    ctx.expect_ok(bind, 1, 0, gpa, 0)
    ctx.expect_ok(bind, 4, gm, gpa, 4 * P)  # the freed range binds again
    g.close()


@case("3.3")
def private_conversions_through_gmem_and_userspace(ctx: Ctx) -> None:
    """private_mem_conversions_test's core: shared GPAs read userspace_addr, private ones guest_memfd; the two
    views are different pages, flipped with the page mapped in both directions; guest_memfd keeps its
    contents across a round trip; partial ranges (realkernel-private.md 4a, A column)."""
    lay = Layout(ctx)
    ctx.expect_bytes(lay.read(0), bytes([UA_BYTE]), "shared page from userspace_addr")
    lay.attrs(0, 1, PRIVATE)  # flipped while the guest has it mapped shared
    ctx.expect_bytes(lay.read(0), b"\x00", "fresh private page from guest_memfd")
    lay.write(0, b"\x42")
    ctx.expect_bytes(lay.read(0), b"\x42", "private write read back")
    ctx.expect_bytes(lay.anon.read(0, 1), bytes([UA_BYTE]), "userspace_addr untouched by the private write")
    lay.attrs(0, 1, 0)
    ctx.expect_bytes(lay.read(0), bytes([UA_BYTE]), "shared again: userspace_addr")
    lay.write(0, b"\x17", offset=8)
    ctx.expect_bytes(lay.anon.read(8, 1), b"\x17", "shared write lands in userspace_addr")
    lay.attrs(0, 1, PRIVATE)
    ctx.expect_bytes(lay.read(0), b"\x42", "the guest_memfd page survived the round trip")
    lay.attrs(1, 2, PRIVATE)
    lay.attrs(2, 1, 0)
    ctx.expect_bytes(lay.read(1) + lay.read(2) + lay.read(3), bytes([0, UA_BYTE, UA_BYTE]), "partial ranges")
    lay.write(1, b"\x11" * 16)
    ctx.expect_bytes(lay.read(1, 0, 16), b"\x11" * 16, "private page 1")
    lay.attrs(0, NPAGES, 0)
    ctx.expect_bytes(lay.read(0, 0, 4) + lay.read(1, 0, 1), bytes([UA_BYTE]) * 5, "all shared")


@case("3.3")
def private_punch_hole_reads_zero(ctx: Ctx) -> None:
    """punch-hole test: private pages punched without conversion read zero afterwards, both the whole file
    and a single page, while they stay private (realkernel-private.md 4a/punch_private, finding 13)."""
    lay = Layout(ctx)
    lay.attrs(0, NPAGES, PRIVATE)
    for page in range(NPAGES):
        lay.write(page, bytes([0x30 + page]) * 8)
    ctx.expect_ok(lay.gmem.fallocate, PUNCH, P, P)
    ctx.expect_bytes(lay.read(1, 0, 8), bytes(8), "punched private page")
    ctx.expect_bytes(lay.read(2, 0, 8), b"\x32" * 8, "its neighbour")
    ctx.expect_ok(lay.gmem.fallocate, PUNCH, 0, NPAGES * P)
    ctx.expect_bytes(lay.read(0, 0, 8) + lay.read(3, 0, 8), bytes(16), "whole file punched")
    lay.attrs(1, 1, 0)
    ctx.expect_bytes(lay.read(1), bytes([UA_BYTE]), "converted back: userspace_addr again")


@case("3.4")
def private_memory_fault_exits(ctx: Ctx) -> None:
    """private_mem_kvm_exits_test: a private GPA in a memslot without guest_memfd exits to userspace with
    KVM_EXIT_MEMORY_FAULT (PRIVATE, the page's GPA, 4096) for reads and writes, at any offset; flipping it
    back to shared lets the same vCPU go on (realkernel-private.md 4b, finding 7)."""
    vm = swp_vm(ctx)
    anon = ctx.system.mmap_anonymous(NPAGES * P)
    anon.fill(0, NPAGES * P, UA_BYTE)
    gpa = ctx.gpa_base(NPAGES * P)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, NPAGES * P, userspace_addr=anon.address)
    cpu = vm.create_vcpu(0)
    ctx.expect_ok(vm.set_memory_attributes, gpa + P, 2 * P, PRIVATE)
    for offset, write in ((0, False), (0, True), (P - 2, False), (P + 8, False)):
        ex = ctx.expect_exit(cpu.write if write else cpu.read, gpa + P + offset, *((b"\x01",) if write else (1,)))
        page = gpa + P + (offset & ~(P - 1))
        ctx.check((ex.exit_reason, ex.gpa, ex.size, ex.flags) ==
                  (KVM_EXIT_MEMORY_FAULT, page, P, KVM_MEMORY_EXIT_FLAG_PRIVATE), f"memory fault payload {ex}")
    ctx.expect_bytes(cpu.read(gpa, 1), bytes([UA_BYTE]), "shared page before them")
    ctx.expect_ok(vm.set_memory_attributes, gpa + P, P, 0)
    ctx.expect_bytes(cpu.read(gpa + P, 1), bytes([UA_BYTE]), "flipped back to shared")


@case("3.4")
def private_access_after_slot_deleted(ctx: Ctx) -> None:
    """private_mem_kvm_exits_test: a private access to a GPA whose guest_memfd memslot was deleted exits with
    KVM_EXIT_MEMORY_FAULT (PRIVATE), not as MMIO; a shared one there is MMIO."""
    lay = Layout(ctx)
    lay.attrs(0, 1, PRIVATE)
    lay.write(0, b"\x42")
    ctx.expect_ok(lay.vm.set_user_memory_region2, 1, 0, lay.gpa, 0)
    lay.expect_memory_fault(0)
    ex = ctx.expect_exit(lay.read, 1)
    ctx.check(ex.exit_reason != KVM_EXIT_MEMORY_FAULT, f"a shared GPA without memslot is MMIO, got {ex}")


@case("rkp")
def private_gmem_closed_while_bound(ctx: Ctx) -> None:
    """realkernel-private.md 4e (A): after the guest_memfd's last reference is gone (slot still bound), a
    private GPA exits with KVM_EXIT_MEMORY_FAULT, for a page the guest had mapped and one it had not."""
    lay = Layout(ctx)
    lay.attrs(0, 2, PRIVATE)
    lay.write(0, b"\x42")
    ctx.expect_bytes(lay.read(0), b"\x42", "before close")
    lay.gmem.close()
    lay.expect_memory_fault(0)
    lay.expect_memory_fault(1)
    ctx.expect_bytes(lay.read(2), bytes([UA_BYTE]), "shared pages still come from userspace_addr")


@case("rkp")
def private_mmap_gmem_is_gmem_only(ctx: Ctx) -> None:
    """realkernel-private.md 4c/5 gmem_only (finding 12): an MMAP guest_memfd (no INIT_SHARED on SW_PROTECTED)
    makes its slot gmem-only: shared GPAs read guest_memfd too, the host cannot fault the pages (SIGBUS), and
    converting with the VM ioctl keeps the contents (one page for both views)."""
    lay = Layout(ctx, gmem_flags=ctx.MMAP, uaddr="gmem")
    ctx.expect_bytes(lay.read(0), b"\x00", "shared GPA served from guest_memfd")
    lay.write(0, b"\x21")
    ctx.expect_bytes(lay.read(0), b"\x21", "shared write read back")
    ctx.expect_sigbus(lay.map.read, 0, 1)  # type: ignore[union-attr]
    lay.attrs(0, 1, PRIVATE)
    ctx.expect_bytes(lay.read(0), b"\x21", "private view is the same page")
    lay.attrs(0, 1, 0)
    ctx.expect_bytes(lay.read(0), b"\x21", "and back")
    anon_slot = Layout(ctx, gmem_flags=ctx.MMAP, uaddr="anon")
    ctx.expect_bytes(anon_slot.read(0), b"\x00", "userspace_addr is ignored by a gmem-only slot")
    anon_slot.write(0, b"\x5e")
    ctx.expect_bytes(anon_slot.anon.read(0, 1), bytes([UA_BYTE]), "the anonymous page is untouched")


@case("rkp")
def private_gmem_without_mmap_uses_userspace_addr(ctx: Ctx) -> None:
    """realkernel-private.md 5/gmem_only/swp_vm_noflags (A): a guest_memfd without MMAP does not make the slot
    gmem-only: shared accesses read and write userspace_addr."""
    lay = Layout(ctx)
    ctx.expect_bytes(lay.read(0), bytes([UA_BYTE]), "shared read")
    lay.write(0, b"\x5e")
    ctx.expect_bytes(lay.anon.read(0, 1), b"\x5e", "shared write reached userspace_addr")


@case("2.7")
def private_mmio_gpa_made_private(ctx: Ctx) -> None:
    """A GPA without memslot that the guest touched (emulated MMIO) and that is then made private: the attribute
    change zaps only GPAs inside memslots, so where the kernel caches MMIO SPTEs (``kvm.mmio_caching``) the GPA
    stays emulated MMIO; after a memslot change makes the SPTE stale the access goes on as a *shared* fault and
    exits with KVM_EXIT_MEMORY_FAULT flags 0; made shared again it is MMIO once more. Without MMIO caching
    the attribute decides at once (a PRIVATE memory fault). Found on 6.18.2 under QEMU; either way an untouched
    private GPA without memslot is a PRIVATE memory fault, and pre-fault follows the attribute."""
    vm = swp_vm(ctx)
    anon = ctx.system.mmap_anonymous(NPAGES * P)
    gpa = ctx.gpa_base(1 << 22)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, NPAGES * P, userspace_addr=anon.address)
    cpu = vm.create_vcpu(0)
    hole, fresh = gpa + (1 << 20), gpa + (1 << 20) + P
    private_fault = (KVM_EXIT_MEMORY_FAULT, fresh, P, KVM_MEMORY_EXIT_FLAG_PRIVATE)
    ctx.expect_ok(vm.set_memory_attributes, fresh, P, PRIVATE)
    ex = ctx.expect_exit(cpu.read, fresh, 1)
    ctx.check((ex.exit_reason, ex.gpa, ex.size, ex.flags) == private_fault, f"untouched private GPA: {ex}")
    ex = ctx.expect_exit(cpu.read, hole, 1)
    ctx.check(ex.exit_reason == KVM_EXIT_MMIO, f"a shared GPA without memslot is MMIO, got {ex}")
    ctx.expect_ok(vm.set_memory_attributes, hole, P, PRIVATE)
    ex = ctx.expect_exit(cpu.read, hole, 1)
    if ex.exit_reason == KVM_EXIT_MEMORY_FAULT:  # no MMIO caching: the attribute decides
        ctx.check((ex.gpa, ex.size, ex.flags) == (hole, P, KVM_MEMORY_EXIT_FLAG_PRIVATE), f"memory fault {ex}")
        return
    ctx.check(ex.exit_reason == KVM_EXIT_MMIO, f"cached MMIO SPTE: expected MMIO or a memory fault, got {ex}")
    ctx.expect_ok(vm.set_user_memory_region2, 2, 0, gpa + (2 << 20), P, userspace_addr=anon.address)
    for _ in range(2):
        ex = ctx.expect_exit(cpu.read, hole, 1)
        ctx.check((ex.exit_reason, ex.gpa, ex.size, ex.flags) == (KVM_EXIT_MEMORY_FAULT, hole, P, 0),
                  f"stale MMIO SPTE: expected a shared-type memory fault, got {ex}")
    ctx.expect_ok(vm.set_memory_attributes, hole, P, 0)
    ex = ctx.expect_exit(cpu.read, hole, 1)
    ctx.check(ex.exit_reason == KVM_EXIT_MMIO, f"shared again: MMIO, got {ex}")
