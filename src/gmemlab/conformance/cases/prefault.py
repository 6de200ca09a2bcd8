"""``KVM_PRE_FAULT_MEMORY`` (spec 2.10, 3.4 ``pre_fault_memory_test``; realkernel-private.md rows ``4a/prefault_*``,
``4b/prefault_private_no_gmem``; realkernel.md #263-#267), written once for the model and any kernel.

Pre-fault maps GPAs into stage 2 as the vCPU's read faults would, without running it, and writes back the range
it did not reach. Only the TDP MMU can do it (``KVM_CAP_PRE_FAULT_MEMORY``): on a kernel without it (this
machine's shadow-MMU ``kvm_pvm`` host) the cases that need it skip with the value read, and
:func:`pre_fault_without_tdp` checks what such a kernel answers instead.
"""

from __future__ import annotations

from ...uapi import KVM_MEM_GUEST_MEMFD, Cap, VmType
from ..case import CaseList, Ctx
from ..constants import M2, PUNCH, P
from .private import NPAGES, PRIVATE, UA_BYTE, Layout

CASES = CaseList()
case = CASES.case

U64 = 1 << 64


def _bad_arguments(ctx: Ctx, cpu: object, gpa: int) -> None:
    """The EINVALs of kvm_vcpu_pre_fault_memory: flags, unaligned gpa or size, size 0, a wrapping range."""
    for args in ((gpa, P, 1), (gpa, P, 1 << 63), (gpa + 1, P, 0), (gpa, P + 1, 0), (gpa, 0, 0), (U64 - P, 2 * P, 0),
                 (gpa + 8, 0, 1)):
        ctx.expect_errno("EINVAL", cpu.pre_fault_memory, *args)  # type: ignore[attr-defined]


@case("3.4")
def pre_fault_memory_test(ctx: Ctx) -> None:
    """pre_fault_memory_test on a default VM: 2 MiB of an anonymous slot pre-fault fully (gpa advanced, size 0);
    a range one page past the slot's end stops there with that page left, and pre-faulting it alone is ENOENT
    (no memslot); pre-faulting again is a no-op that succeeds; contents are untouched; bad arguments EINVAL."""
    vm = ctx.vm(int(VmType.DEFAULT))
    ctx.require_cap(Cap.PRE_FAULT_MEMORY, on=vm)
    anon = ctx.system.mmap_anonymous(M2)
    anon.fill(0, M2, 0x5A)
    gpa = ctx.gpa_base(2 * M2)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, M2, userspace_addr=anon.address)
    cpu = vm.create_vcpu(0)
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa, M2) == (gpa + M2, 0), "2 MiB pre-faulted in full")
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa, M2) == (gpa + M2, 0), "pre-faulting mapped pages again")
    left = ctx.expect_ok(cpu.pre_fault_memory, gpa + M2 - 4 * P, 5 * P)
    ctx.check(left == (gpa + M2, P), f"a range one page past the slot leaves that page: {left}")
    ctx.expect_errno("ENOENT", cpu.pre_fault_memory, gpa + M2, P)
    ctx.expect_errno("ENOENT", cpu.pre_fault_memory, gpa + M2, 3 * P)
    ctx.expect_bytes(cpu.read(gpa + M2 - 8, 8), b"\x5a" * 8, "pre-fault does not change memory")
    _bad_arguments(ctx, cpu, gpa)


@case("3.4")
def pre_fault_gmem_slots(ctx: Ctx) -> None:
    """Pre-fault through guest_memfd on a default VM: a gmem-only slot (MMAP|INIT_SHARED, userspace_addr 0) and a
    gmem slot without MMAP (INIT_SHARED) whose shared pages come from userspace_addr (from the gmem with in-place
    conversion); a range spanning both slots and the hole
    after them stops at the hole; what the host wrote through the gmem mapping is what the guest reads."""
    vm = ctx.vm(int(VmType.DEFAULT))
    ctx.require_cap(Cap.PRE_FAULT_MEMORY, on=vm)
    gpa = ctx.gpa_base(16 * P)
    only = ctx.expect_ok(vm.create_guest_memfd, 4 * P, ctx.MMAP | ctx.INIT_SHARED)
    plain = ctx.expect_ok(vm.create_guest_memfd, 4 * P, ctx.INIT_SHARED)  # shared from the start in every lineage
    anon = ctx.system.mmap_anonymous(4 * P)
    anon.fill(0, 4 * P, UA_BYTE)
    ctx.expect_ok(vm.set_user_memory_region2, 1, KVM_MEM_GUEST_MEMFD, gpa, 4 * P, userspace_addr=0,
                  guest_memfd=only, guest_memfd_offset=0)
    ctx.expect_ok(vm.set_user_memory_region2, 2, KVM_MEM_GUEST_MEMFD, gpa + 4 * P, 4 * P,
                  userspace_addr=anon.address, guest_memfd=plain, guest_memfd_offset=0)
    cpu = vm.create_vcpu(0)
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa, 10 * P) == (gpa + 8 * P, 2 * P), "stops at the hole")
    host = only.mmap(4 * P)
    host.write(P, b"\x42")
    # with in-place conversion (linux-7.4) every guest_memfd slot is gmem-only (linux-7.md 1.1)
    second = 0 if ctx.in_place() else UA_BYTE
    ctx.expect_bytes(cpu.read(gpa + P, 1) + cpu.read(gpa + 5 * P, 1), bytes([0x42, second]), "both slots")


@case("rkp")
def pre_fault_private_rows(ctx: Ctx) -> None:
    """realkernel-private.md 4a/prefault_* (A column) on a SW_PROTECTED VM: private and shared pages of a gmem
    slot, a punched private page (allocation cannot be seen: st_blocks stays 0, finding 13), a plain slot, a range
    spanning the plain slot and the gmem slot's private and shared pages, no memslot (ENOENT), bad arguments
    (EINVAL); after pre-fault the private page reads as a fresh guest_memfd page."""
    lay = Layout(ctx)
    ctx.require_cap(Cap.PRE_FAULT_MEMORY, on=lay.vm)
    anon = ctx.system.mmap_anonymous(P)
    anon.fill(0, P, 0x11)
    ctx.expect_ok(lay.vm.set_user_memory_region2, 2, 0, lay.gpa - P, P, userspace_addr=anon.address)
    lay.attrs(0, 2, PRIVATE)
    cpu, gpa = lay.cpu, lay.gpa
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa, P) == (gpa + P, 0), "4a/prefault_private")
    blocks = lay.gmem.fstat().st_blocks
    ctx.expect_ok(lay.gmem.fallocate, PUNCH, P, P)
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa + P, P) == (gpa + 2 * P, 0), "4a/prefault_private_unallocated")
    ctx.check(lay.gmem.fstat().st_blocks == blocks, "st_blocks after pre-faulting a punched page")
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa + 3 * P, P) == (gpa + 4 * P, 0), "4a/prefault_shared")
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa - P, P) == (gpa, 0), "4a/prefault_code")
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa - P, 5 * P) == (gpa + 4 * P, 0), "4a/prefault_span")
    ctx.expect_errno("ENOENT", cpu.pre_fault_memory, gpa + (1 << 20), P)  # 4a/prefault_noslot
    _bad_arguments(ctx, cpu, gpa)  # 4a/prefault_unaligned, _flags, _size0
    ctx.expect_bytes(cpu.read(gpa, 1) + cpu.read(gpa + 3 * P, 1) + cpu.read(gpa - P, 1),
                     bytes([0, UA_BYTE, 0x11]), "private, shared and plain pages after pre-fault")


@case("rkp")
def pre_fault_private_without_gmem(ctx: Ctx) -> None:
    """realkernel-private.md 4b/prefault_private_no_gmem (A): a private GPA in a slot without guest_memfd is EFAULT
    with the range left unchanged (finding 7); a range that starts on shared pages stops before it (ok, the
    private page left); flipped back to shared it pre-faults; a private GPA without any memslot is EFAULT too
    (kvm_handle_noslot_fault: private faults are never MMIO)."""
    from .private import swp_vm

    vm = swp_vm(ctx)
    ctx.require_cap(Cap.PRE_FAULT_MEMORY, on=vm)
    anon = ctx.system.mmap_anonymous(NPAGES * P)
    gpa = ctx.gpa_base(NPAGES * P)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, NPAGES * P, userspace_addr=anon.address)
    cpu = vm.create_vcpu(0)
    ctx.expect_ok(vm.set_memory_attributes, gpa + 2 * P, P, PRIVATE)
    ctx.expect_errno("EFAULT", cpu.pre_fault_memory, gpa + 2 * P, P)
    ctx.expect_errno("EFAULT", cpu.pre_fault_memory, gpa + 2 * P, 2 * P)
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa, NPAGES * P) == (gpa + 2 * P, 2 * P), "stops at the private page")
    ctx.expect_ok(vm.set_memory_attributes, gpa + 2 * P, P, 0)
    ctx.check(ctx.expect_ok(cpu.pre_fault_memory, gpa + 2 * P, 2 * P) == (gpa + NPAGES * P, 0), "shared again")
    hole = gpa + (1 << 20)
    ctx.expect_ok(vm.set_memory_attributes, hole, P, PRIVATE)
    ctx.expect_errno("EFAULT", cpu.pre_fault_memory, hole, P)


@case("rk")
def pre_fault_without_tdp(ctx: Ctx) -> None:
    """realkernel.md #263-#267: with KVM_CAP_PRE_FAULT_MEMORY = 0 (shadow MMU) the argument checks still run
    (flags, alignment: EINVAL) and every valid range, mapped or not, is EOPNOTSUPP."""
    vm = ctx.vm(int(VmType.DEFAULT))
    value = vm.check_extension(Cap.PRE_FAULT_MEMORY)
    if value:
        ctx.skip(f"the kernel pre-faults (KVM_CAP_PRE_FAULT_MEMORY = {value}): pre_fault_memory_test covers it")
    anon = ctx.system.mmap_anonymous(16 * P)
    gpa = ctx.gpa_base(16 * P)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, 16 * P, userspace_addr=anon.address)
    cpu = vm.create_vcpu(0)
    for args in ((gpa, P), (gpa, 16 * P), (gpa + (1 << 20), P)):
        ctx.expect_errno("EOPNOTSUPP", cpu.pre_fault_memory, *args)
    _bad_arguments(ctx, cpu, gpa)
