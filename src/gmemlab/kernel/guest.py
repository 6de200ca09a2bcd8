"""The tiny native guest that performs guest accesses: memory layout, page tables and hand-assembled code.

On this ``kvm_pvm`` host only a 64-bit guest at CPL3 runs natively, so its faults go through the shadow
MMU into ``kvm_gmem_get_pfn()`` (realkernel.md, "Running a guest natively on this host" and findings
section 3). The setup below follows that recipe:

* **System slot.** One anonymous ``MAP_SHARED`` memslot of :data:`SYSTEM_SIZE` at GPA 0 holds the code,
  the page tables, one mailbox/stack page per vCPU and one bounce buffer per vCPU. The host reads and
  writes it directly (it is ordinary memory), the guest through its identity map.
* **Identity map.** Guest virtual = guest physical for ``[0, IDENTITY_TOP)`` with 2 MiB pages: one PML4,
  one PDPT with 64 entries, 64 page directories. 64 GiB (36 bits) is below every MAXPHYADDR KVM reports
  in the supported CPUID the vCPU gets (``KVM_SET_CPUID2``), and is KVM's default without CPUID, so no PTE
  has reserved bits set. Every entry is present, writable and user-accessible (the guest runs at CPL3).
* **Reporting.** The guest reports by storing EAX to :data:`REPORT_GPA`, the last 2 MiB page of the identity
  map, where no memslot may exist: the store is emulated as MMIO and ``KVM_RUN`` returns
  ``KVM_EXIT_MMIO`` (write). Cases must therefore keep memslots inside :data:`GPA_WINDOW`.
* **Service loop.** The code is a loop: load ``src``, ``dst``, ``count`` from the vCPU's mailbox, copy with
  ``rep movsb``, report, jump back. The host fills the mailbox while the vCPU sits in the MMIO exit; the
  next ``KVM_RUN`` completes the MMIO store and the guest runs the next request. So one request costs
  exactly one exit, and a guest read or write of ``n`` bytes is ``rep movsb`` between the target GPA and
  the bounce buffer, ascending, stopping at the first byte KVM cannot serve (memory-fault exit, MMIO).
"""

from __future__ import annotations

import functools
import struct

MIB = 1 << 20
GIB = 1 << 30
PAGE_2M = 2 * MIB

SYSTEM_GPA = 0
SYSTEM_SIZE = 2 * MIB
IDENTITY_TOP = 64 * GIB  # 2**36: the smallest MAXPHYADDR KVM gives a vCPU
REPORT_GPA = IDENTITY_TOP - PAGE_2M  # unbacked; stores here exit with KVM_EXIT_MMIO
GPA_WINDOW = (SYSTEM_GPA + SYSTEM_SIZE, REPORT_GPA)  # where cases may place memslots

CODE_GPA = 0x1000
PML4_GPA = 0x2000
PDPT_GPA = 0x3000
PD_GPA = 0x4000  # 64 page directories, 0x4000..0x43fff
N_PD = IDENTITY_TOP // GIB
MAILBOX_GPA = 0x50000  # one page per vCPU: mailbox at the start, stack at the top
BOUNCE_GPA = 0x100000  # 1 MiB of bounce buffers, split between vCPUs
MAX_VCPUS = 4
BOUNCE_SIZE = (SYSTEM_SIZE - BOUNCE_GPA) // MAX_VCPUS  # 256 KiB per vCPU

REPORT_MAGIC = 0x600DF00D  # EAX value the service loop stores to REPORT_GPA

PTE_P, PTE_RW, PTE_US, PTE_PS = 1 << 0, 1 << 1, 1 << 2, 1 << 7

# -------------------------------------------------------------------------------------------------
# Hand-assembled code (64-bit mode). Register conventions set by the host (see initial_regs):
#   r12 = mailbox GPA (u64 src @0, u64 dst @8, u64 count @16), rbx = REPORT_GPA, eax = REPORT_MAGIC,
#   r13 = REPORT_ROUTINE_GPA (where gmemlab.backend.report_stub code jumps).
# -------------------------------------------------------------------------------------------------
SERVICE_LOOP = b"".join(
    [
        # loop:
        bytes.fromhex("49 8B 34 24"),  # mov rsi, [r12]     REX.W+B; 8B /r; ModRM 00.110.100; SIB base=r12
        bytes.fromhex("49 8B 7C 24 08"),  # mov rdi, [r12+8]  ModRM 01.111.100; SIB 0x24; disp8 8
        bytes.fromhex("49 8B 4C 24 10"),  # mov rcx, [r12+16] ModRM 01.001.100; SIB 0x24; disp8 16
        bytes.fromhex("F3 A4"),  # rep movsb                copy rcx bytes [rsi] -> [rdi], ascending (DF=0)
        bytes.fromhex("89 03"),  # mov [rbx], eax           report: the MMIO store to REPORT_GPA exits
        bytes.fromhex("EB EC"),  # jmp loop                 rel8 = -20, the loop's length
    ]
)
assert len(SERVICE_LOOP) == 20
SPIN = bytes.fromhex("EB FE")  # spin: jmp spin (rel8 -2), a guest that never reports, for the watchdog
# report: the routine gmemlab.backend.report_stub code jumps to (via r13) with its value in EAX
REPORT = bytes.fromhex("89 03 EB FE")  # mov [rbx], eax (the MMIO report); jmp $ (never reached: the vCPU is reset)
SERVICE_LOOP_GPA = CODE_GPA
SPIN_GPA = CODE_GPA + 0x800
REPORT_ROUTINE_GPA = CODE_GPA + 0x900

# Control registers and segments (realkernel.md "Running a guest natively on this host").
CR0 = 0x80050033  # PG, AM, WP, NE, ET, MP, PE
CR4 = 0x10620  # PAE, OSFXSR, OSXMMEXCPT, FSGSBASE
EFER = 0xD01  # NXE, LMA, LME, SCE
RFLAGS = 0x202  # IF, reserved bit 1
CODE_SEGMENT = {
    "selector": 0x33,
    "type": 11,
    "s": 1,
    "dpl": 3,
    "present": 1,
    "l": 1,
    "db": 0,
    "g": 1,
    "base": 0,
    "limit": 0xFFFFF,
}
DATA_SEGMENT = {
    "selector": 0x2B,
    "type": 3,
    "s": 1,
    "dpl": 3,
    "present": 1,
    "l": 0,
    "db": 1,
    "g": 1,
    "base": 0,
    "limit": 0xFFFFF,
}
TSS_SEGMENT = {"type": 11, "present": 1, "s": 0, "base": 0, "limit": 0}


def mailbox_gpa(index: int) -> int:
    return MAILBOX_GPA + index * 0x1000


def stack_top(index: int) -> int:
    return mailbox_gpa(index) + 0x1000


def bounce_gpa(index: int) -> int:
    return BOUNCE_GPA + index * BOUNCE_SIZE


@functools.cache
def page_tables() -> list[tuple[int, bytes]]:
    """``(gpa, bytes)`` pieces of the identity map: PML4, PDPT and 64 PDs of 2 MiB pages."""
    pml4 = struct.pack("<Q", PDPT_GPA | PTE_P | PTE_RW | PTE_US)
    pdpt = struct.pack(f"<{N_PD}Q", *((PD_GPA + i * 0x1000) | PTE_P | PTE_RW | PTE_US for i in range(N_PD)))
    flags = PTE_P | PTE_RW | PTE_US | PTE_PS
    pds = struct.pack(f"<{N_PD * 512}Q", *((i * PAGE_2M) | flags for i in range(N_PD * 512)))
    return [(PML4_GPA, pml4), (PDPT_GPA, pdpt), (PD_GPA, pds)]


def system_image() -> list[tuple[int, bytes]]:
    """Everything the host writes into the system slot before the first vCPU runs."""
    return [*page_tables(), (SERVICE_LOOP_GPA, SERVICE_LOOP), (SPIN_GPA, SPIN), (REPORT_ROUTINE_GPA, REPORT)]


def initial_regs(index: int) -> dict[str, int]:
    """General registers at (re-)entry of the service loop for vCPU ``index``."""
    return {
        "rip": SERVICE_LOOP_GPA,
        "rflags": RFLAGS,
        "rsp": stack_top(index),
        "rbx": REPORT_GPA,
        "r12": mailbox_gpa(index),
        "r13": REPORT_ROUTINE_GPA,
        "rax": REPORT_MAGIC,
    }
