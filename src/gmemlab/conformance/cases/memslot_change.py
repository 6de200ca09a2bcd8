"""Changing an existing guest_memfd memslot (spec 2.6 step 5), written once for the model and any kernel.

Dropping KVM_MEM_GUEST_MEMFD from a guest_memfd slot is EINVAL since upstream 9935df5333aa (6.19; 6.18.3 on the
stable line); 6.18.0-6.18.2 accept it as a FLAGS_ONLY or MOVE change that frees the old slot without unbinding
its file range (found by fuzzing inside 6.18.2 under QEMU). The model follows the kernel under test through its
release (:func:`gmemlab.model.config.gmem_flag_toggle_accepted`); the case checks what follows either answer.
On a kernel that accepts the change the case exercises that use-after-free (releasing the file writes into the
freed slot), so run it only in a disposable VM; it is harmless where the change is refused.
"""

from __future__ import annotations

import errno

from ...errors import KvmError
from ...uapi import KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, VmType
from ..case import CaseList, Ctx
from ..constants import P

CASES = CaseList()
case = CASES.case

UA_BYTE = 0x99


@case("2.6")
def gmem_slot_drop_guest_memfd_flag(ctx: Ctx) -> None:
    """Re-set a guest_memfd slot (gmem-only: MMAP|INIT_SHARED, userspace_addr = anonymous memory of 0x99) with flags
    0. Refused (EINVAL, upstream since 9935df5333aa): the slot still reads guest_memfd, a move or LOG_DIRTY_PAGES
    without the flag is EINVAL too, and after a delete the range binds again. Accepted (6.18.0-6.18.2): the slot
    reads userspace_addr except where the guest had a page mapped (a flags-only change does not zap), moves like a
    plain slot, and the file range stays bound even after the slot is deleted
    (binding it again is EINVAL) while the rest of the file binds."""
    vm = ctx.vm(int(VmType.DEFAULT))
    gmem = ctx.expect_ok(vm.create_guest_memfd, 8 * P, ctx.MMAP | ctx.INIT_SHARED)
    host = gmem.mmap(8 * P)
    host.write(0, b"\x42")
    anon = ctx.system.mmap_anonymous(4 * P)
    anon.fill(0, 4 * P, UA_BYTE)
    gpa = ctx.gpa_base(1 << 22)
    gm = KVM_MEM_GUEST_MEMFD

    def bind(slot: int, flags: int, address: int, offset: int = 0) -> None:
        vm.set_user_memory_region2(slot, flags, address, 4 * P, userspace_addr=anon.address, guest_memfd=gmem,
                                   guest_memfd_offset=offset)

    ctx.expect_ok(bind, 1, gm, gpa)
    cpu = vm.create_vcpu(0)
    ctx.expect_bytes(cpu.read(gpa, 1), b"\x42", "a gmem-only slot reads guest_memfd")
    try:
        bind(1, 0, gpa)
        accepted = True
    except KvmError as exc:
        ctx.check(exc.errno == errno.EINVAL, f"dropping KVM_MEM_GUEST_MEMFD: expected EINVAL or success, got {exc}")
        accepted = False
    if not accepted:
        ctx.expect_bytes(cpu.read(gpa, 1), b"\x42", "the refused change left a guest_memfd slot")
        ctx.expect_errno("EINVAL", bind, 1, 0, gpa + (1 << 21))
        ctx.expect_errno("EINVAL", bind, 1, KVM_MEM_LOG_DIRTY_PAGES, gpa)
        ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, 0)
        ctx.expect_ok(bind, 3, gm, gpa + (1 << 21))
        ctx.expect_bytes(cpu.read(gpa + (1 << 21), 1), b"\x42", "the range bound again")
        return
    # KVM_MR_FLAGS_ONLY does not zap: the page the guest had mapped still comes from guest_memfd, others fault
    # through userspace_addr
    ctx.expect_bytes(cpu.read(gpa, 1), b"\x42", "a leaf mapped before the change keeps its guest_memfd page")
    ctx.expect_bytes(cpu.read(gpa + P, 1), bytes([UA_BYTE]), "the slot became a plain one: userspace_addr")
    ctx.expect_ok(bind, 1, 0, gpa + (1 << 21))  # a plain slot moves
    ctx.expect_bytes(cpu.read(gpa + (1 << 21), 1), bytes([UA_BYTE]), "moved plain slot")
    ctx.expect_errno("EINVAL", bind, 2, gm, gpa + (2 << 20) + (1 << 20))  # the file range is still bound
    ctx.expect_ok(bind, 2, gm, gpa + (3 << 20), offset=4 * P)  # the rest of the file is free
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa + (1 << 21), 0)
    ctx.expect_errno("EINVAL", bind, 3, gm, gpa, offset=0)  # bound to the freed slot for good
    ctx.expect_bytes(cpu.read(gpa + (3 << 20), 1), b"\x00", "the other half of the file")
