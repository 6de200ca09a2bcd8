"""Guest code executing from guest_memfd (issue 15 item 4; realkernel-private.md rows 4a/exec_private_guest_written,
4b/memfault_exec, finding 7; realkernel.md #277-#278), written once for the model and any kernel.

The vCPU jumps to a GPA holding :func:`gmemlab.backend.report_stub` code (``mov eax, imm32`` and a jump to the
backend's report routine) and returns the value it reported, so the value proves which page the instruction
fetch was served from. A fetch is a read access for fault routing: through guest_memfd for private GPAs and
gmem-only slots, through ``userspace_addr`` for shared GPAs of other slots, ``KVM_EXIT_MEMORY_FAULT`` for a
private GPA without guest_memfd.
"""

from __future__ import annotations

from ...backend import report_stub
from ...uapi import KVM_EXIT_MEMORY_FAULT, KVM_MEM_GUEST_MEMFD, KVM_MEMORY_EXIT_FLAG_PRIVATE, VmType
from ..case import CaseList, Ctx
from ..constants import PUNCH, P
from .private import NPAGES, PRIVATE, UA_BYTE, Layout, swp_vm

CASES = CaseList()
case = CASES.case


@case("2.7")
def execute_from_shared_memory(ctx: Ctx) -> None:
    """A default VM runs code from an anonymous slot (host-written), from a gmem-only slot (MMAP|INIT_SHARED,
    userspace_addr 0; written by the host through the gmem mapping and by the guest), and sees a rewrite of the
    code at once; after a punch hole the host's new code is what runs."""
    vm = ctx.vm(int(VmType.DEFAULT))
    gpa = ctx.gpa_base(8 * P)
    anon = ctx.system.mmap_anonymous(4 * P)
    anon.write(0x100, report_stub(0x11111111))
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, 4 * P, userspace_addr=anon.address)
    gmem = ctx.expect_ok(vm.create_guest_memfd, 4 * P, ctx.MMAP | ctx.INIT_SHARED)
    ctx.expect_ok(vm.set_user_memory_region2, 2, KVM_MEM_GUEST_MEMFD, gpa + 4 * P, 4 * P, userspace_addr=0,
                  guest_memfd=gmem, guest_memfd_offset=0)
    host = gmem.mmap(4 * P)
    host.write(0x800, report_stub(0x22222222))
    cpu = vm.create_vcpu(0)
    ctx.check(ctx.expect_ok(cpu.execute, gpa + 0x100) == 0x11111111, "code in anonymous memory")
    ctx.check(ctx.expect_ok(cpu.execute, gpa + 4 * P + 0x800) == 0x22222222, "host-written code in guest_memfd")
    cpu.write(gpa + 5 * P + 0x10, report_stub(0x33333333))
    ctx.check(ctx.expect_ok(cpu.execute, gpa + 5 * P + 0x10) == 0x33333333, "guest-written code in guest_memfd")
    ctx.expect_bytes(host.read(P + 0x10, 4), report_stub(0x33333333)[:4], "the host sees the guest's code")
    anon.write(0x100, report_stub(0x44444444))
    ctx.check(ctx.expect_ok(cpu.execute, gpa + 0x100) == 0x44444444, "rewritten code runs")
    ctx.expect_ok(gmem.fallocate, PUNCH, 0, P)
    host.write(0x800, report_stub(0x55555555))
    ctx.check(ctx.expect_ok(cpu.execute, gpa + 4 * P + 0x800) == 0x55555555, "code written after a punch hole")


@case("rkp")
def execute_private_guest_written(ctx: Ctx) -> None:
    """realkernel-private.md 4a/exec_private_guest_written (A): a SW_PROTECTED guest writes code to a private GPA
    and runs it; the fetch is served by guest_memfd (userspace_addr holds other code, which runs once the page is
    shared again, and private code survives the round trip)."""
    lay = Layout(ctx)
    lay.anon.write(P + 0x40, report_stub(0x99999999))
    ctx.check(ctx.expect_ok(lay.cpu.execute, lay.gpa + P + 0x40) == 0x99999999, "shared: userspace_addr's code")
    lay.attrs(1, 1, PRIVATE)
    lay.write(1, report_stub(0x55), offset=0x40)
    ctx.check(ctx.expect_ok(lay.cpu.execute, lay.gpa + P + 0x40) == 0x55, "private: guest_memfd's code")
    ctx.expect_bytes(lay.anon.read(P + 0x40, 8), report_stub(0x99999999), "userspace_addr keeps its own code")
    lay.attrs(1, 1, 0)
    ctx.check(ctx.expect_ok(lay.cpu.execute, lay.gpa + P + 0x40) == 0x99999999, "shared again")
    lay.attrs(1, 1, PRIVATE)
    ctx.check(ctx.expect_ok(lay.cpu.execute, lay.gpa + P + 0x40) == 0x55, "private code survived the round trip")


@case("rkp")
def execute_private_without_gmem(ctx: Ctx) -> None:
    """realkernel-private.md 4b/memfault_exec (A): jumping to a private GPA in a slot without guest_memfd exits
    with KVM_EXIT_MEMORY_FAULT (PRIVATE, the page's GPA, 4096) at any offset; flipped back to shared the code in
    userspace_addr runs on the same vCPU."""
    vm = swp_vm(ctx)
    anon = ctx.system.mmap_anonymous(NPAGES * P)
    anon.fill(0, NPAGES * P, UA_BYTE)
    anon.write(P + 0x20, report_stub(0x1234))
    gpa = ctx.gpa_base(NPAGES * P)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, NPAGES * P, userspace_addr=anon.address)
    cpu = vm.create_vcpu(0)
    ctx.expect_ok(vm.set_memory_attributes, gpa + P, P, PRIVATE)
    for offset in (0x20, 0, P - 16):
        ex = ctx.expect_exit(cpu.execute, gpa + P + offset)
        ctx.check((ex.exit_reason, ex.gpa, ex.size, ex.flags) ==
                  (KVM_EXIT_MEMORY_FAULT, gpa + P, P, KVM_MEMORY_EXIT_FLAG_PRIVATE), f"memory fault payload {ex}")
    ctx.expect_ok(vm.set_memory_attributes, gpa + P, P, 0)
    ctx.check(ctx.expect_ok(cpu.execute, gpa + P + 0x20) == 0x1234, "shared again: userspace_addr's code runs")


@case("rkp")
def execute_gmem_only_private_vm(ctx: Ctx) -> None:
    """realkernel-private.md finding 12 with code: on a SW_PROTECTED VM an MMAP guest_memfd slot (userspace_addr
    = its mapping, which the host cannot fault) is one page for both views: code the guest wrote while shared runs
    after the page is made private."""
    lay = Layout(ctx, gmem_flags=ctx.MMAP, uaddr="gmem")
    lay.write(2, report_stub(0xC0DE), offset=0x80)
    ctx.check(ctx.expect_ok(lay.cpu.execute, lay.gpa + 2 * P + 0x80) == 0xC0DE, "shared gmem-only page")
    lay.attrs(2, 1, PRIVATE)
    ctx.check(ctx.expect_ok(lay.cpu.execute, lay.gpa + 2 * P + 0x80) == 0xC0DE, "the same page, private")
