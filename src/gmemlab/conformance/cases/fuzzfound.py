"""Disagreements the lockstep fuzzer (and issue 9's hand tries) found between the model and the kernel, kept as
cases that run on both backends once fixed (the kernel was right each time, except where the kernel client was
wrong: then the case pins the client's fix).

The answers written here are this machine's kernel's (6.18 on kvm_pvm) and generic mm/VFS behaviour, so they
hold on every merged profile: vCPU ids and counts (``kvm_vm_ioctl_create_vcpu``), memslot ids with
address-space bits, every madvise advice on a guest_memfd mapping, MADV_REMOVE running past a mapping into its
guard, values that do not fit their C type, fcntl/flock corners, a second MMIO read on one vCPU, a store to a
read-only page past EOF, move_pages over a guard, mbind's int mode and its empty range.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...backend import MAPPING_GUARD
from ...errors import UnrepresentableArgument
from ...uapi import KVM_EXIT_MMIO, KVM_MEM_GUEST_MEMFD, Cap
from ..case import CaseList, Ctx
from ..constants import LINUX, P

CASES = CaseList()
case = CASES.case

MMAP_INIT_SHARED = 3


def expect_refused(ctx: Ctx, fn: Callable[..., Any], *args: Any) -> None:
    """A value the C type cannot hold: refused before the kernel, by both backends."""
    try:
        fn(*args)
    except UnrepresentableArgument:
        return
    ctx.check(False, f"expected {fn} to refuse an unrepresentable argument")


def _shared_mapping(ctx: Ctx, pages: int = 4, file_pages: int = 16) -> tuple[Any, Any, Any]:
    vm = ctx.vm(0)
    flags = vm.check_extension(Cap.GUEST_MEMFD_FLAGS)
    if flags & MMAP_INIT_SHARED != MMAP_INIT_SHARED:
        ctx.skip(f"needs GUEST_MEMFD_FLAG_MMAP|INIT_SHARED on a default VM: KVM_CAP_GUEST_MEMFD_FLAGS = {flags:#x}")
    g = ctx.expect_ok(vm.create_guest_memfd, file_pages * P, MMAP_INIT_SHARED)
    return vm, g, ctx.expect_ok(g.mmap, pages * P)


@case("2.13")
def fuzz_vcpu_ids(ctx: Ctx) -> None:
    """vCPU ids: below KVM_CAP_MAX_VCPU_ID, unique (EEXIST), -1 and 2**40 EINVAL, 2**64 not an unsigned long."""
    vm = ctx.vm(0)
    max_id = vm.check_extension(Cap.MAX_VCPU_ID)
    ctx.check(max_id > 1, f"KVM_CAP_MAX_VCPU_ID = {max_id}")
    ctx.expect_ok(vm.create_vcpu, 0)
    ctx.expect_errno("EEXIST", vm.create_vcpu, 0)
    ctx.expect_ok(vm.create_vcpu, max_id - 1)
    for bad in (max_id, max_id + 904, -1, 1 << 31, 1 << 32, 1 << 40, (1 << 64) - 1):
        ctx.expect_errno("EINVAL", vm.create_vcpu, bad)
    expect_refused(ctx, vm.create_vcpu, 1 << 64)


@case("2.6")
def fuzz_memslot_ids_and_address_spaces(ctx: Ctx) -> None:
    """Slot ids carry the address space in bits 16-31: beyond KVM_CAP_NR_MEMSLOTS or the VM's address spaces
    EINVAL; 2**40 does not fit the __u32 field and is refused, never truncated to slot 0."""
    vm = ctx.vm(0)
    nr = vm.check_extension(Cap.NR_MEMSLOTS)
    spaces = max(1, vm.check_extension(Cap.MULTI_ADDRESS_SPACE))
    gpa = ctx.gpa_base(P)
    anon = ctx.system.mmap_anonymous(P)
    ctx.expect_ok(vm.set_user_memory_region2, 2, 0, gpa, P, userspace_addr=anon.address)
    ctx.expect_errno("EINVAL", vm.set_user_memory_region2, nr, 0, gpa + P, P, userspace_addr=anon.address)
    ctx.expect_errno("EINVAL", vm.set_user_memory_region2, 0xFFFFFFFF, 0, gpa + P, P, userspace_addr=anon.address)
    beyond = spaces << 16 | 2
    ctx.expect_errno("EINVAL", vm.set_user_memory_region2, beyond, 0, gpa, P, userspace_addr=anon.address)
    if spaces > 1:  # another address space: the same GPA does not overlap
        ctx.expect_ok(vm.set_user_memory_region2, 1 << 16 | 2, 0, gpa, P, userspace_addr=anon.address)
    expect_refused(ctx, vm.set_user_memory_region2, 1 << 40, 0, gpa, P, anon.address)
    # 2**40 would have been slot 0 of address space 0 if truncated: slot 2 at gpa says EEXIST, not this
    ctx.expect_errno("EEXIST", vm.set_user_memory_region2, 3, 0, gpa, P, userspace_addr=anon.address)


# madvise on two pages of a guest_memfd mapping (MMAP|INIT_SHARED), advice by advice, as this kernel answers:
# 5-7, 26, 27, 99 and -1 are not advices; MADV_FREE needs private anonymous memory; MADV_WIPEONFORK too;
# MADV_COLLAPSE does not apply to guest_memfd; the rest succeed (102/103: guard markers install and go), except
# MADV_[UN]MERGEABLE without CONFIG_KSM and MADV_[NO]HUGEPAGE without CONFIG_TRANSPARENT_HUGEPAGE (EINVAL).
MADVISE_ANSWERS = {**{a: "ok" for a in (0, 1, 2, 3, 4, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 24,
                                        102, 103)},
                   **{a: "EINVAL" for a in (5, 6, 7, 8, 18, 25, 26, 27, 99, -1)}}


@case("2.4")
def fuzz_madvise_every_advice(ctx: Ctx) -> None:
    """Every madvise advice on a guest_memfd mapping: the model answers each as the kernel does (an unknown
    advice is EINVAL, not 'unsupported')."""
    _, _, m = _shared_mapping(ctx)
    answers = dict(MADVISE_ANSWERS)
    # madvise_behavior_valid(): these advices exist only in kernels built with their feature (host facts)
    mm = ctx.system.mm_features()
    for feature, advices in (("ksm", (12, 13)), ("transparent_hugepage", (14, 15))):
        if not mm.get(feature, True):
            answers.update(dict.fromkeys(advices, "EINVAL"))
            ctx.notes.append(f"no {feature}: advices {advices} are EINVAL")
    for advice, want in answers.items():
        if want == "ok":
            ctx.expect_ok(m.madvise, 0, 2 * P, advice)
        else:
            ctx.expect_errno(want, m.madvise, 0, 2 * P, advice)
    expect_refused(ctx, m.madvise, 0, P, 1 << 32)


@case("2.4")
def fuzz_madvise_remove_past_the_mapping(ctx: Ctx) -> None:
    """MADV_REMOVE over pages 3-4 of a 4-page mapping punches page 3, then meets the PROT_NONE private guard
    after the mapping: EINVAL. Past the mapping only: EINVAL. MADV_DONTNEED there is fine."""
    _, _, m = _shared_mapping(ctx)
    m.fill(0, 4 * P, 0x11)
    ctx.expect_errno("EINVAL", m.madvise, 3 * P, 2 * P, 9)
    ctx.expect_bytes(m.read(3 * P, 4), b"\0" * 4, "page 3 after MADV_REMOVE over pages 3-4")
    ctx.expect_bytes(m.read(2 * P, 4), b"\x11" * 4, "page 2 untouched")
    ctx.expect_errno("EINVAL", m.madvise, 4 * P, 2 * P, 9)
    ctx.expect_ok(m.madvise, 4 * P, 2 * P, 4)
    ctx.expect_ok(m.madvise, -P, 2 * P, 4)
    ctx.expect_sigsegv(m.read, 4 * P, 1)  # the guard after the mapping
    ctx.expect_sigsegv(m.write, -1, b"x")  # and before it


@case("2.4")
def fuzz_values_that_do_not_fit(ctx: Ctx) -> None:
    """Values their C type cannot hold are refused (not truncated): a node mask of 2**100, a fill byte of
    300, a VM type of 2**64, a length of 2**64, a range leaving the mapping's reservation."""
    _, _, m = _shared_mapping(ctx)
    expect_refused(ctx, m.mbind, 0, P, 2, 1 << 100)
    expect_refused(ctx, m.fill, 0, 1, 300)
    expect_refused(ctx, ctx.system.create_vm, 1 << 64)
    expect_refused(ctx, m.madvise, 0, 1 << 64, 4)
    ctx.expect_ok(m.fill, 0, 1, -1)  # -1 fits an unsigned char as 0xff
    ctx.expect_bytes(m.read(0, 1), b"\xff", "fill byte -1")
    try:
        m.madvise(4 * P + MAPPING_GUARD, P, 4)
    except Exception as exc:
        ctx.check(type(exc).__name__ == "OutsideReservation", f"past the guard: {exc!r}")
    else:
        ctx.check(False, "a range past the guard reached the kernel")


@case("2.3")
def fuzz_fcntl_and_flock(ctx: Ctx) -> None:
    """fcntl/flock on a guest_memfd: F_GETFL is O_RDWR|O_LARGEFILE, F_SETFL keeps O_NONBLOCK, O_DIRECT is
    EINVAL, F_NOTIFY with an empty mask is 0, seals EINVAL, a pipe size EBADF; flock LOCK_MAND is ignored."""
    vm = ctx.vm(0)
    g = ctx.expect_ok(vm.create_guest_memfd, P, 0)
    ctx.check(g.fcntl(3) == 0o100002, "F_GETFL")
    ctx.check(g.fcntl(1) == 0, "F_GETFD: created without O_CLOEXEC")
    ctx.expect_ok(g.fcntl, 4, 0o4000)
    ctx.check(g.fcntl(3) == 0o104002, "F_GETFL after F_SETFL O_NONBLOCK")
    ctx.expect_errno("EINVAL", g.fcntl, 4, 0o40000)
    ctx.check(g.fcntl(1026, 0) == 0, "F_NOTIFY 0")
    ctx.expect_errno("ENOTDIR", g.fcntl, 1026, 1)
    ctx.expect_errno("EINVAL", g.fcntl, 1033, 1)
    ctx.expect_errno("EBADF", g.fcntl, 1032, 0)
    ctx.expect_ok(g.flock, -1)  # LOCK_MAND set: ignored
    ctx.expect_errno("EINVAL", g.flock, 3)
    d = ctx.expect_ok(g.dup)
    ctx.check(d.fcntl(3) == 0o104002, "a dup()ed fd shares the file's flags")
    ctx.check(d.fcntl(1) == 0, "and has no FD_CLOEXEC")
    for call in (d.fsync, g.fsync):
        ctx.expect_errno("EINVAL", call)
    ctx.expect_errno("EINVAL", g.fchmod, 0o600)
    ctx.expect_errno("EINVAL", g.fchown, -1, -1)
    ctx.expect_ok(g.fadvise, 0, 0, 4)
    ctx.expect_errno("EINVAL", g.fadvise, 0, 0, 6)


@case("2.13")
def fuzz_fadvise_negative_offset(ctx: Ctx) -> None:
    """fadvise64 with a negative offset: ignored up to 6.18 (6.18.2, 6.18.44), EINVAL on 7.3.4 (found by the
    lockstep fuzzer inside Debian 7.3.4; the same on a memfd, so a generic VFS check)."""
    vm = ctx.vm(0)
    g = ctx.expect_ok(vm.create_guest_memfd, 4 * P, 0)
    for advice in (0, 3, 4):
        if ctx.since("linux-7.3"):
            ctx.expect_errno("EINVAL", g.fadvise, -17 * P, 16 * P, advice)
        else:
            ctx.expect_ok(g.fadvise, -17 * P, 16 * P, advice)
    ctx.expect_ok(g.fadvise, 1 << 62, 1 << 62, 3)


@case("2.7")
def fuzz_second_mmio_read(ctx: Ctx) -> None:
    """Two guest reads of an unbacked GPA on one vCPU: two MMIO exits (the kernel client once answered the
    second from the first one's completed read)."""
    vm = ctx.vm(0)
    cpu = vm.create_vcpu(0)
    gpa = ctx.gpa_base(P)
    for length in (8, 1, 16):
        e = ctx.expect_exit(cpu.read, gpa, length)
        ctx.check(e.exit_reason == KVM_EXIT_MMIO, f"exit {e}")


@case("2.4")
def fuzz_store_to_read_only_page_past_eof(ctx: Ctx) -> None:
    """A store to a read-only page past EOF is SIGSEGV (the VMA's write permission first), a load SIGBUS."""
    vm = ctx.vm(0)
    g = ctx.expect_ok(vm.create_guest_memfd, 16 * P, MMAP_INIT_SHARED)
    m = ctx.expect_ok(g.mmap, P, 16 * P)
    ctx.expect_ok(m.mprotect, 0, P, 1)
    ctx.expect_sigsegv(m.fill, 0, 1, 0xAA)
    ctx.expect_sigbus(m.read, 0, 1)


@case("2.4")
def fuzz_numa_calls_over_guards(ctx: Ctx) -> None:
    """move_pages over a mapping and its guard: -ENOENT for the guard page; mbind's mode is an int (2**32 is
    MPOL_DEFAULT); an empty mbind range succeeds before the node mask is looked at."""
    _, _, m = _shared_mapping(ctx, pages=1)
    m.fill(0, 1, 1)
    nodes = ctx.expect_ok(m.page_nodes, 0, 2)
    ctx.check(nodes[1] == -2, f"move_pages status of the guard page: {nodes}")
    ctx.expect_ok(m.mbind, 0, P, 1 << 32, 0)
    ctx.expect_ok(m.mbind, 0, 0, 2, 0)
    ctx.expect_errno("EINVAL", m.mbind, 0, P, 2, 0)


@case("2.4")
def fuzz_vmsplice_gup_rules(ctx: Ctx) -> None:
    """vmsplice (GUP, read): a PROT_WRITE-only page not yet mapped is EFAULT (check_vma_flags needs VM_READ),
    one already mapped is spliced (GUP-fast looks at the PTE only, readable on x86); a range running into the
    guard faults in the pages before it, then EFAULT."""
    _, _, m = _shared_mapping(ctx)
    m.fill(P, 1, 1)
    ctx.expect_ok(m.mprotect, 0, 4 * P, 2)
    ctx.expect_errno("EFAULT", m.vmsplice, 0, P)
    ctx.expect_ok(m.vmsplice, P, P).unpin()
    ctx.expect_ok(m.mprotect, 0, 4 * P, 3)
    ctx.expect_errno("EFAULT", m.vmsplice, 2 * P + 1, 2 * P)
    ctx.check(m.pte_present(3 * P), "page 3 faulted in before the guard refused")


@case("2.4")
def fuzz_anonymous_memory_corners(ctx: Ctx) -> None:
    """Private anonymous memory (a guard made accessible): a page only read is the zero page (move_pages
    -EFAULT), a written one has a node; MADV_FREE leaves it mapped with its data. Shared anonymous memory
    (shmem): a read fault maps the cached pages of its 16-page block (fault-around), MADV_PAGEOUT unmaps them and
    drops a clean one from the cache."""
    anon = ctx.system.mmap_anonymous(32 * P)
    ctx.expect_ok(anon.mprotect, -2 * P, 2 * P, 3)
    anon.read(-2 * P, 1)
    anon.fill(-P, 1, 7)
    nodes = ctx.expect_ok(anon.page_nodes, -2 * P, 2)
    ctx.check(nodes[0] == -14 and nodes[1] >= 0, f"move_pages of the zero page and a written page: {nodes}")
    ctx.expect_ok(anon.madvise, -P, P, 8)
    ctx.check(anon.pte_present(-P), "MADV_FREE left the page mapped")
    ctx.expect_bytes(anon.read(-P, 1), b"\x07", "MADV_FREE kept the data")
    anon.fill(P, 1, 1)  # dirty, in shmem's page cache
    anon.read(2 * P, 1)  # clean, in the cache
    ctx.expect_ok(anon.madvise, 0, 32 * P, 4)
    anon.read(0, 1)
    ctx.check(anon.pte_present(P) and anon.pte_present(2 * P), "fault-around maps the cached pages")
    ctx.check(not anon.pte_present(16 * P), "but not past the 16-page block")
    ctx.expect_ok(anon.madvise, 0, 32 * P, 21)
    ctx.check(not anon.pte_present(P), "MADV_PAGEOUT unmaps shmem pages")
    anon.read(0, 1)
    ctx.check(anon.pte_present(P) and not anon.pte_present(2 * P), "the clean page left the cache, not the dirty")


@case("2.4")
def fuzz_mbind_strict_without_move(ctx: Ctx) -> None:
    """mbind(MPOL_MF_STRICT) with a present page outside the mask: alone it is EIO and sets no policy (the walk
    stops before mbind_range()); with MPOL_MF_MOVE the anonymous page migrates and the policy is set.
    MPOL_PREFERRED with an empty mask is MPOL_LOCAL (4). The zero page is never misplaced."""
    anon = ctx.system.mmap_anonymous(4 * P)
    ctx.expect_ok(anon.mprotect, 0, 4 * P, 3)
    anon.fill(P, 1, 1)  # a present page: its node is in no empty mask
    ctx.expect_errno("EIO", anon.mbind, 0, 4 * P, 1, 0, 1)
    ctx.check(ctx.expect_ok(anon.get_mempolicy, 2 * P) == (0, 0), "a failed MPOL_MF_STRICT mbind set no policy")
    ctx.expect_ok(anon.mbind, 0, 4 * P, 1, 0, 1 | 2)
    ctx.check(ctx.expect_ok(anon.get_mempolicy, 2 * P)[0] == 4, "MPOL_MF_MOVE migrates and sets MPOL_LOCAL")
    # the zero page has no folio to be misplaced (vm_normal_folio() is NULL): MPOL_MF_STRICT passes over it
    ctx.expect_ok(anon.mprotect, -2 * P, 2 * P, 1)
    anon.read(-2 * P, 1)
    ctx.expect_ok(anon.mbind, -2 * P, P, 4, 0, 1)


@case("2.4")
def fuzz_vmsplice_of_the_zero_page(ctx: Ctx) -> None:
    """vmsplice (GUP, read) of PROT_WRITE-only private anonymous memory (a guard made writable): a page a read
    fault mapped to the shared zero page is EFAULT (its PTE is special, GUP-fast leaves it to the slow path,
    which needs VM_READ); a written page is spliced by GUP-fast from its PTE."""
    anon = ctx.system.mmap_anonymous(4 * P)  # shared anonymous memory; the guard before it is private
    ctx.expect_ok(anon.mprotect, -2 * P, 2 * P, 2)
    anon.read(-2 * P, 1)  # the zero page
    anon.fill(-P, 1, 5)  # a page of its own
    ctx.check(anon.pte_present(-2 * P) and anon.pte_present(-P), "both pages are mapped")
    ctx.expect_errno("EFAULT", anon.vmsplice, -2 * P, P)
    ctx.expect_ok(anon.vmsplice, -P, P).unpin()


@case("2.4")
def fuzz_pageout_of_shmem_a_child_maps(ctx: Ctx) -> None:
    """MADV_PAGEOUT of shared anonymous memory (shmem) after fork: a page the child maps too is left alone
    (madvise_cold_or_pageout_pte_range() skips folios mapped more than once), and a clean page in the cache
    that only the child maps is not reclaimed (the walk finds folios through the caller's PTEs): the caller's
    next read fault maps it around (host fuzz run, seed 921)."""
    anon = ctx.system.mmap_anonymous(4 * P)
    anon.fill(0, 1, 7)
    child = ctx.system.fork()
    try:
        copy = child.mapping(anon)
        ctx.expect_bytes(copy.read(0, 1), b"\x07", "the child sees the parent's page")
        copy.read(2 * P, 1)  # clean, in the cache, mapped by the child only
        ctx.expect_ok(anon.madvise, 0, 4 * P, 21)
        ctx.check(anon.pte_present(0), "MADV_PAGEOUT leaves a page the child maps too")
        anon.read(3 * P, 1)
        ctx.check(anon.pte_present(2 * P), "a clean page only the child maps stays in the cache (fault-around)")
        # MADV_REMOVE punches the shmem file: every process's PTEs go (unmap_mapping_range), the child's too
        ctx.expect_ok(anon.madvise, 0, P, 9)
        anon.read(0, 1)
        ctx.expect_ok(anon.madvise, 0, P, 21)
        ctx.check(not anon.pte_present(0), "after the punch the new page is the parent's alone: paged out")
        ctx.expect_bytes(copy.read(0, 1), b"\x00", "the child sees the punched page")
        copy.read(P, 1)
        anon.read(P, 1)
        child.exit()
        ctx.expect_ok(anon.madvise, 0, 4 * P, 21)
        ctx.check(not anon.pte_present(P), "once the child is gone the page is the parent's alone: unmapped")
    finally:
        child.exit()


@case("2.6", profiles=LINUX)
def fuzz_guest_memory_past_eof(ctx: Ctx) -> None:
    """Up to 7.1 kvm_gmem_bind compares a signed offset + size with i_size: an offset near LOFF_MAX whose sum
    wraps negative passes (guest_memfd.md 5.2), and the guest's faults then put folios past EOF
    (kvm_gmem_get_pfn does not look at i_size): the guest reads back what it wrote. 7.2 compares unsigned:
    EINVAL (host fuzz run, seed 925: the model had no page cache past EOF)."""
    vm = ctx.vm(0)
    cpu = vm.create_vcpu(0)
    size = 16 * P
    g = vm.create_guest_memfd(size, ctx.MMAP | ctx.INIT_SHARED)
    gpa = ctx.gpa_base(size)
    offset = (1 << 63) - P  # offset + size = LOFF_MAX + 1 + 15 pages: negative as loff_t
    bind = (vm.set_user_memory_region2, 1, KVM_MEM_GUEST_MEMFD, gpa, size)
    if ctx.since("linux-7.3"):
        ctx.expect_errno("EINVAL", *bind, userspace_addr=0, guest_memfd=g, guest_memfd_offset=offset)
        return
    ctx.expect_ok(*bind, userspace_addr=0, guest_memfd=g, guest_memfd_offset=offset)
    ctx.expect_ok(cpu.write, gpa + 12 * P - 8, b"\x5a" * 16)  # two folios, both past EOF
    ctx.expect_bytes(ctx.expect_ok(cpu.read, gpa + 12 * P - 8, 16), b"\x5a" * 16, "the guest's data past EOF")
    ctx.expect_bytes(ctx.expect_ok(cpu.read, gpa, 8), bytes(8), "a folio past EOF starts zeroed")


@case("2.4")
def fuzz_wipeonfork_and_guard_markers(ctx: Ctx) -> None:
    """MADV_WIPEONFORK private anonymous memory (a guard made accessible): the parent keeps its data and guard
    markers, a forked child gets the part empty (dup_mmap skips copy_page_range: zero pages, no markers);
    MADV_KEEPONFORK undoes it for the next fork (host fuzz run, seed 929)."""
    anon = ctx.system.mmap_anonymous(2 * P)
    ctx.expect_ok(anon.mprotect, -2 * P, 2 * P, 3)
    anon.fill(-P, 1, 7)
    ctx.expect_ok(anon.madvise, -2 * P, P, 102)  # a guard marker on the first page
    ctx.expect_ok(anon.madvise, -2 * P, 2 * P, 18)
    ctx.expect_sigsegv(anon.fill, -2 * P, 1, 1)
    child = ctx.system.fork()
    try:
        copy = child.mapping(anon)
        ctx.expect_bytes(copy.read(-P, 1), b"\x00", "the child's wiped page is zero")
        ctx.expect_ok(copy.fill, -2 * P, 1, 1)  # no guard marker in the child
    finally:
        child.exit()
    ctx.expect_bytes(anon.read(-P, 1), b"\x07", "the parent keeps its data")
    ctx.expect_ok(anon.madvise, -2 * P, 2 * P, 19)
    child = ctx.system.fork()
    try:
        copy = child.mapping(anon)
        ctx.expect_bytes(copy.read(-P, 1), b"\x07", "after MADV_KEEPONFORK the child has the parent's data")
        ctx.expect_sigsegv(copy.fill, -2 * P, 1, 1)
    finally:
        child.exit()
