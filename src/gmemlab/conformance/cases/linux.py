"""Conformance cases for merged Linux (spec 3.1 guest_memfd_test.c, 3.2 set_memory_region_test.c), and
rows of realkernel.md that pin down behaviour the selftests leave open (file operations, mmap edges,
fallocate modes, binding rules, lifetimes, guest access through gmem-only slots).

Each upstream battery runs per VM type (KVM_CAP_VM_TYPES) and per flag set, as the selftest driver does.
"""

from __future__ import annotations

from typing import Any

from ...backend import MADV_DONTNEED, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE
from ...uapi import (
    FALLOC_FL_COLLAPSE_RANGE,
    FALLOC_FL_INSERT_RANGE,
    FALLOC_FL_NO_HIDE_STALE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_UNSHARE_RANGE,
    FALLOC_FL_WRITE_ZEROES,
    FALLOC_FL_ZERO_RANGE,
    KVM_EXIT_MEMORY_FAULT,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    MPOL_BIND,
    MPOL_DEFAULT,
    MPOL_INTERLEAVE,
    Cap,
    VmType,
)
from ..case import CaseList, Ctx
from ..constants import INVALID_PUNCHES, KEEP, LINUX, MADV_COLLAPSE, MADV_HUGEPAGE, PUNCH, P
from ..record import Proxy

CASES = CaseList()
case = CASES.case

# -------------------------------------------------------------------------------------------------------
# 3.1 guest_memfd_test.c: the per-VM-type, per-flags battery
# -------------------------------------------------------------------------------------------------------


def _battery_flags(ctx: Ctx, vm: Proxy) -> list[int]:
    """The driver's flag sets: 0, MMAP if supported, MMAP|INIT_SHARED if supported."""
    supported = vm.check_extension(Cap.GUEST_MEMFD_FLAGS)
    sets = [0]
    if supported & ctx.MMAP:
        sets.append(ctx.MMAP)
    if supported & ctx.INIT_SHARED:
        ctx.check(bool(supported & ctx.MMAP), "MMAP must be supported whenever INIT_SHARED is")
        sets.append(ctx.MMAP | ctx.INIT_SHARED)
    return sets


def _each_vm_and_flags(ctx: Ctx, want: str = "any") -> list[tuple[Proxy, int]]:
    ctx.require_cap(Cap.GUEST_MEMFD)
    out = []
    for vm_type in ctx.system.vm_types():
        vm = ctx.system.create_vm(int(vm_type))
        for flags in _battery_flags(ctx, vm):
            mmap = bool(flags & ctx.MMAP)
            shared = bool(flags & ctx.INIT_SHARED)
            if (
                want == "any"
                or (want == "no-mmap" and not mmap)
                or (want == "mmap" and mmap)
                or (want == "mmap-shared" and mmap and shared)
                or (want == "mmap-private" and mmap and not shared)
            ):
                out.append((vm, flags))
    if not out:
        ctx.skip(f"no VM type here offers a flag set for this test ({want})")
    return out


@case("3.1")
def test_guest_memfd_flags(ctx: Ctx) -> None:
    """Each single flag bit: accepted iff in KVM_CAP_GUEST_MEMFD_FLAGS, else EINVAL."""
    ctx.require_cap(Cap.GUEST_MEMFD)
    for vm_type in ctx.system.vm_types():
        vm = ctx.system.create_vm(int(vm_type))
        valid = vm.check_extension(Cap.GUEST_MEMFD_FLAGS)
        for bit in range(64):
            flag = 1 << bit
            if flag & valid:
                ctx.expect_ok(vm.create_guest_memfd, P, flag).close()
            else:
                ctx.expect_errno("EINVAL", vm.create_guest_memfd, P, flag)
        vm.close()


@case("3.1")
def test_create_guest_memfd_multiple(ctx: Ctx) -> None:
    """1- and 2-page files: sizes as created, first unchanged by the second, distinct inodes."""
    for vm, flags in _each_vm_and_flags(ctx):
        a = ctx.expect_ok(vm.create_guest_memfd, P, flags)
        ctx.check(a.fstat().st_size == P, "first file size")
        b = ctx.expect_ok(vm.create_guest_memfd, 2 * P, flags)
        ctx.check(b.fstat().st_size == 2 * P, "second file size")
        ctx.check(a.fstat().st_size == P, "first size unchanged")
        ctx.check(a.fstat().st_ino != b.fstat().st_ino, "inode numbers must differ")
        a.close()
        b.close()


@case("3.1")
def test_create_guest_memfd_invalid_sizes(ctx: Ctx) -> None:
    """Every size 1..PAGE_SIZE-1 (sampled densely) is EINVAL with the battery's flags."""
    sizes = sorted({*range(1, 64), *range(64, P, 61), P - 1})
    for vm, flags in _each_vm_and_flags(ctx):
        for size in sizes:
            ctx.expect_errno("EINVAL", vm.create_guest_memfd, size, flags)


@case("3.1")
def test_file_read_write(ctx: Ctx) -> None:
    """read, write, pread and pwrite on a gmem fd all fail."""
    for vm, flags in _each_vm_and_flags(ctx):
        g = vm.create_guest_memfd(4 * P, flags)
        ctx.expect_fail(g.read, 64)
        ctx.expect_fail(g.write, b"x" * 64)
        ctx.expect_fail(g.pread, 64, 0)
        ctx.expect_fail(g.pwrite, b"x" * 64, 0)
        g.close()


@case("3.1")
def test_mmap_not_supported(ctx: Ctx) -> None:
    """Without MMAP: MAP_SHARED of 1 page and of the whole file both fail."""
    for vm, flags in _each_vm_and_flags(ctx, "no-mmap"):
        g = vm.create_guest_memfd(4 * P, flags)
        ctx.expect_fail(g.mmap, P)
        ctx.expect_fail(g.mmap, 4 * P)
        g.close()


@case("3.1")
def test_mmap_supported(ctx: Ctx) -> None:
    """MMAP|INIT_SHARED: memset 0xaa reads back; punch page 0 -> zeros there, rest kept; rewrite."""
    for vm, flags in _each_vm_and_flags(ctx, "mmap-shared"):
        g = vm.create_guest_memfd(4 * P, flags)
        m = ctx.expect_ok(g.mmap, 4 * P)
        m.fill(0, 4 * P, 0xAA)
        ctx.expect_bytes(m.read(0, 4 * P), b"\xaa" * 4 * P, "after memset")
        ctx.expect_ok(g.fallocate, PUNCH, 0, P)
        ctx.expect_bytes(m.read(0, P), bytes(P), "punched page")
        ctx.expect_bytes(m.read(P, 3 * P), b"\xaa" * 3 * P, "pages after the hole")
        m.fill(0, P, 0xAA)
        ctx.expect_bytes(m.read(0, 4 * P), b"\xaa" * 4 * P, "after rewrite")
        m.munmap()
        g.close()


@case("3.1")
def test_fault_overflow(ctx: Ctx) -> None:
    """A 16-page mapping of a 4-page file: memset SIGBUSes at EOF; first 4 pages keep 0xaa."""
    for vm, flags in _each_vm_and_flags(ctx, "mmap-shared"):
        g = vm.create_guest_memfd(4 * P, flags)
        m = g.mmap(16 * P)
        bus = ctx.expect_sigbus(m.fill, 0, 16 * P, 0xAA)
        ctx.check(bus.offset == 4 * P, f"SIGBUS at {bus.offset:#x}, expected at EOF {4 * P:#x}")
        ctx.expect_sigbus(m.read, 4 * P, 1)
        ctx.expect_bytes(m.read(0, 4 * P), b"\xaa" * 4 * P, "pages before EOF")
        m.munmap()
        g.close()


@case("3.1")
def test_fault_private(ctx: Ctx) -> None:
    """MMAP without INIT_SHARED: memset and read of the mapping SIGBUS at the first byte."""
    for vm, flags in _each_vm_and_flags(ctx, "mmap-private"):
        g = vm.create_guest_memfd(4 * P, flags)
        m = ctx.expect_ok(g.mmap, 4 * P)
        bus = ctx.expect_sigbus(m.fill, 0, 4 * P, 0xAA)
        ctx.check(bus.offset == 0, "SIGBUS at the first byte")
        ctx.expect_sigbus(m.read, 0, 1)
        m.munmap()
        g.close()


@case("3.1")
def test_mmap_cow(ctx: Ctx) -> None:
    """MAP_PRIVATE of an mmap-capable gmem fails."""
    for vm, flags in _each_vm_and_flags(ctx, "mmap"):
        g = vm.create_guest_memfd(4 * P, flags)
        ctx.expect_fail(g.mmap, 4 * P, 0, PROT_READ | PROT_WRITE, MAP_PRIVATE)
        g.close()


def _need_nodes(ctx: Ctx, n: int) -> None:
    have = ctx.system.nr_numa_nodes()
    if have < n:
        ctx.skip(f"needs >= {n} NUMA nodes, this host has {have} (the selftest skips too)")


@case("3.1")
def test_mbind(ctx: Ctx) -> None:
    """INTERLEAVE on pages 0-1 and BIND on 2-3 read back; DEFAULT over all reads back empty; mode 999 EINVAL."""
    _need_nodes(ctx, 2)
    for vm, flags in _each_vm_and_flags(ctx, "mmap"):
        g = vm.create_guest_memfd(4 * P, flags)
        m = g.mmap(4 * P)
        ctx.expect_ok(m.mbind, 0, 2 * P, MPOL_INTERLEAVE, 0x1)
        ctx.check(m.get_mempolicy(0) == (MPOL_INTERLEAVE, 0x1), f"INTERLEAVE read back {m.get_mempolicy(0)}")
        ctx.expect_ok(m.mbind, 2 * P, 2 * P, MPOL_BIND, 0x1)
        ctx.check(m.get_mempolicy(2 * P) == (MPOL_BIND, 0x1), f"BIND read back {m.get_mempolicy(2 * P)}")
        ctx.expect_ok(m.mbind, 0, 4 * P, MPOL_DEFAULT, 0)
        ctx.check(m.get_mempolicy(0) == (MPOL_DEFAULT, 0), f"DEFAULT read back {m.get_mempolicy(0)}")
        ctx.expect_errno("EINVAL", m.mbind, 0, 4 * P, 999, 0)
        m.munmap()
        g.close()


WITHOUT_GMEM_MEMPOLICY = ("linux-6.18",)  # profiles before guest_memfd's set_policy/get_policy (U6.19)


@case("3.1")
def test_numa_allocation(ctx: Ctx) -> None:
    """Folios land on the mbind() node and do not move when the policy changes; after a punch they
    follow the new policy (move_pages reports 1,1,0,0 then 0,0,1,1). Before guest_memfd's policy vm_ops
    (U6.19) the page cache ignores the VMA policy and every folio lands on the local node 0 (6.18.2)."""
    _need_nodes(ctx, 2)
    follows = ctx.profile not in WITHOUT_GMEM_MEMPOLICY
    for vm, flags in _each_vm_and_flags(ctx, "mmap-shared"):
        g = vm.create_guest_memfd(4 * P, flags)
        m = g.mmap(4 * P)
        m.write(0, b"x")  # allocated under the default policy: node 0
        ctx.expect_ok(m.mbind, 0, 2 * P, MPOL_BIND, 0x2)
        ctx.expect_ok(m.mbind, 2 * P, 2 * P, MPOL_BIND, 0x1)
        ctx.check(m.page_nodes(0, 1) == [0], f"an allocated page moved: {m.page_nodes(0, 1)}")
        ctx.expect_ok(g.fallocate, PUNCH, 0, 4 * P)
        m.fill(0, 4 * P, 1)
        want = [1, 1, 0, 0] if follows else [0, 0, 0, 0]
        ctx.check(m.page_nodes(0, 4) == want, f"nodes {m.page_nodes(0, 4)}, expected {want}")
        ctx.expect_ok(g.fallocate, PUNCH, 0, 4 * P)
        ctx.expect_ok(m.mbind, 0, 2 * P, MPOL_BIND, 0x1)
        ctx.expect_ok(m.mbind, 2 * P, 2 * P, MPOL_BIND, 0x2)
        m.fill(0, 4 * P, 1)
        want = [0, 0, 1, 1] if follows else [0, 0, 0, 0]
        ctx.check(m.page_nodes(0, 4) == want, f"nodes {m.page_nodes(0, 4)}, expected {want}")
        m.munmap()
        g.close()


@case("3.1")
def test_collapse(ctx: Ctx) -> None:
    """PMD-sized file: MADV_HUGEPAGE ok, MADV_COLLAPSE EINVAL, MADV_DONTNEED then re-read ok."""
    pmd = 1 << 21
    for vm, flags in _each_vm_and_flags(ctx, "mmap-shared"):
        g = vm.create_guest_memfd(pmd, flags)
        m = g.mmap(pmd)
        m.fill(0, pmd, 0x5A)
        ctx.expect_ok(m.madvise, 0, pmd, MADV_HUGEPAGE)
        ctx.expect_errno("EINVAL", m.madvise, 0, pmd, MADV_COLLAPSE)
        ctx.expect_ok(m.madvise, 0, pmd, MADV_DONTNEED)
        ctx.expect_bytes(m.read(0, pmd), b"\x5a" * pmd, "re-read after MADV_DONTNEED")
        m.munmap()
        g.close()


@case("3.1")
def test_file_size(ctx: Ctx) -> None:
    """st_size = 4 pages, st_blksize = PAGE_SIZE."""
    for vm, flags in _each_vm_and_flags(ctx):
        g = vm.create_guest_memfd(4 * P, flags)
        st = g.fstat()
        ctx.check(st.st_size == 4 * P, f"st_size {st.st_size}")
        ctx.check(st.st_blksize == P, f"st_blksize {st.st_blksize}")
        g.close()


@case("3.1")
def test_fallocate(ctx: Ctx) -> None:
    """The upstream fallocate sequence: allocate whole file; unaligned and past-EOF cases; punches."""
    size = 4 * P
    for vm, flags in _each_vm_and_flags(ctx):
        g = vm.create_guest_memfd(size, flags)
        ctx.expect_ok(g.fallocate, KEEP, 0, size)
        ctx.expect_errno("EINVAL", g.fallocate, PUNCH, P - 1, P)
        ctx.expect_errno("EINVAL", g.fallocate, KEEP, size, P)
        ctx.expect_errno("EINVAL", g.fallocate, KEEP, size + P, P)
        ctx.expect_ok(g.fallocate, PUNCH, size, P)
        ctx.expect_ok(g.fallocate, PUNCH, size + P, P)
        ctx.expect_errno("EINVAL", g.fallocate, PUNCH, P, P - 1)
        ctx.expect_ok(g.fallocate, PUNCH, P, P)
        ctx.expect_ok(g.fallocate, KEEP, P, P)
        g.close()


@case("3.1")
def test_invalid_punch_hole(ctx: Ctx) -> None:
    """Ten unaligned (offset, len) punches are EINVAL."""
    for vm, flags in _each_vm_and_flags(ctx):
        g = vm.create_guest_memfd(4 * P, flags)
        for off, length in INVALID_PUNCHES:
            ctx.expect_errno("EINVAL", g.fallocate, PUNCH, off, length)
        g.close()


def _guest_memfd_slot(ctx: Ctx, vm: Proxy, g: Proxy, size: int, slot: int = 1, uaddr: int = 0,
                      offset: int = 0, gpa: int | None = None) -> int:
    base = ctx.gpa_base(size) if gpa is None else gpa
    ctx.expect_ok(vm.set_user_memory_region2, slot, KVM_MEM_GUEST_MEMFD, base, size,
                  userspace_addr=uaddr, guest_memfd=g, guest_memfd_offset=offset)
    return base


@case("3.1")
def test_guest_memfd_guest(ctx: Ctx) -> None:
    """Default VM, 1-page MMAP|INIT_SHARED slot: host fills 0xaa; guest sees it, writes 0xff; host sees 0xff."""
    vm = ctx.vm(int(VmType.DEFAULT))
    need = ctx.MMAP | ctx.INIT_SHARED
    ctx.require_cap(Cap.GUEST_MEMFD_FLAGS, on=vm, mask=need)
    g = vm.create_guest_memfd(P, need)
    m = g.mmap(P)
    # realkernel.md findings 3: the emulator fetches through userspace_addr, so give it the gmem mapping.
    gpa = _guest_memfd_slot(ctx, vm, g, P, uaddr=m.address)
    m.fill(0, P, 0xAA)
    m.munmap()
    cpu = vm.create_vcpu(0)
    ctx.expect_bytes(ctx.expect_ok(cpu.read, gpa, P), b"\xaa" * P, "guest view of host data")
    ctx.expect_ok(cpu.write, gpa, b"\xff" * P)
    m = g.mmap(P)
    ctx.expect_bytes(m.read(0, P), b"\xff" * P, "host view of guest data")
    m.munmap()
    cpu.close()
    g.close()


# -------------------------------------------------------------------------------------------------------
# 3.2 set_memory_region_test.c (guest_memfd parts), on the default VM as 6.18 allows
# -------------------------------------------------------------------------------------------------------


@case("3.2", profiles=(*LINUX, "rfc-v2"))
def test_invalid_memory_region_flags(ctx: Ctx) -> None:
    """v1 refuses every flag but LOG_DIRTY|READONLY; v2 refuses unknown bits, GMEM|LOG_DIRTY, GMEM|RO."""
    vm = ctx.vm(int(VmType.DEFAULT))
    g = vm.create_guest_memfd(1 << 21, 0)
    gpa = ctx.gpa_base(1 << 21)
    anon = ctx.system.mmap_anonymous(1 << 21)
    for bit in range(32):
        flag = 1 << bit
        if flag & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY):
            ctx.expect_errno("EINVAL", vm.set_user_memory_region, 1, flag, gpa, 1 << 21, anon.address)
        if flag & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD):
            ctx.expect_errno("EINVAL", vm.set_user_memory_region2, 1, flag, gpa, 1 << 21,
                             userspace_addr=anon.address, guest_memfd=g, guest_memfd_offset=0)
    for bad in (KVM_MEM_GUEST_MEMFD | KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_GUEST_MEMFD | KVM_MEM_READONLY):
        ctx.expect_errno("EINVAL", vm.set_user_memory_region2, 1, bad, gpa, 1 << 21,
                         userspace_addr=0, guest_memfd=g, guest_memfd_offset=0)
    anon.munmap()
    g.close()


@case("3.2", profiles=(*LINUX, "rfc-v2"))
def test_add_private_memory_region(ctx: Ctx) -> None:
    """Binding /dev/kvm, the VM fd, a memfd or another VM's gmem is EINVAL; unaligned offsets EINVAL."""
    vm = ctx.vm(int(VmType.DEFAULT))
    size = 1 << 21
    gpa = ctx.gpa_base(size)
    memfd = ctx.system.memfd_create(size)
    for bogus in (ctx.system.fd, vm.fd, memfd.fd):
        ctx.expect_errno("EINVAL", vm.set_user_memory_region2, 1, KVM_MEM_GUEST_MEMFD, gpa, size,
                         userspace_addr=0, guest_memfd=bogus, guest_memfd_offset=0)
    other = ctx.system.create_vm(int(VmType.DEFAULT))
    foreign = other.create_guest_memfd(size, 0)
    ctx.expect_errno("EINVAL", vm.set_user_memory_region2, 1, KVM_MEM_GUEST_MEMFD, gpa, size,
                     userspace_addr=0, guest_memfd=foreign, guest_memfd_offset=0)
    g = vm.create_guest_memfd(size, 0)
    for off in [*range(1, 64), *range(64, P, 127)]:
        ctx.expect_errno("EINVAL", vm.set_user_memory_region2, 1, KVM_MEM_GUEST_MEMFD, gpa, size,
                         userspace_addr=0, guest_memfd=g, guest_memfd_offset=off)
    ctx.expect_ok(vm.set_user_memory_region2, 1, KVM_MEM_GUEST_MEMFD, gpa, size,
                  userspace_addr=0, guest_memfd=g, guest_memfd_offset=0)
    ctx.expect_ok(other.set_user_memory_region2, 1, KVM_MEM_GUEST_MEMFD, gpa, size,
                  userspace_addr=0, guest_memfd=foreign, guest_memfd_offset=0)
    memfd.close()


def _overlap_errno(ctx: Ctx) -> str:
    """kvm_gmem_bind on a file range another slot binds: EEXIST from 7.2 (linux-7.md 0), EINVAL before."""
    return "EEXIST" if ctx.since("linux-7.3") else "EINVAL"


@case("3.2", profiles=(*LINUX, "rfc-v2"))
def test_add_overlapping_private_memory_regions(ctx: Ctx) -> None:
    """Pure file-range overlap is EINVAL (<= 7.1 kernels; EEXIST from 7.2, spec 5.1); GPA overlap with another
    slot is EEXIST."""
    vm = ctx.vm(int(VmType.DEFAULT))
    mb2 = 1 << 21
    g = vm.create_guest_memfd(5 * mb2, 0)
    lo, hi = ctx.system.guest_gpa_window()
    gpa_a, gpa_b = (0xC0000000, 0x180000000) if hi >= 0x180000000 + 2 * mb2 else (lo + mb2, lo + 8 * mb2)
    gm = KVM_MEM_GUEST_MEMFD
    ctx.expect_ok(vm.set_user_memory_region2, 1, gm, gpa_a, 2 * mb2, userspace_addr=0, guest_memfd=g,
                  guest_memfd_offset=0)
    ctx.expect_ok(vm.set_user_memory_region2, 2, gm, gpa_b, 2 * mb2, userspace_addr=0, guest_memfd=g,
                  guest_memfd_offset=2 * mb2)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa_a, 0)
    for off in (mb2, 3 * mb2):
        ctx.expect_errno(_overlap_errno(ctx), vm.set_user_memory_region2, 1, gm, gpa_a, 2 * mb2, userspace_addr=0,
                         guest_memfd=g, guest_memfd_offset=off)
    for gpa in (gpa_b - mb2, gpa_b + mb2):
        ctx.expect_errno("EEXIST", vm.set_user_memory_region2, 1, gm, gpa, 2 * mb2, userspace_addr=0,
                         guest_memfd=g, guest_memfd_offset=0)
    g.close()


# -------------------------------------------------------------------------------------------------------
# realkernel.md rows: behaviour the selftests do not assert
# -------------------------------------------------------------------------------------------------------


@case("rk", profiles=LINUX)
def rk_create_sizes_and_reserved(ctx: Ctx) -> None:
    """#36-#71: sizes as signed loff_t, huge sizes lazily accepted, reserved[] ignored."""
    vm = ctx.vm(0)
    for size in (P, 2 * P, 1 << 21, 1 << 30, 1 << 40, 1 << 46, 1 << 62, (1 << 63) - P):
        ctx.expect_ok(vm.create_guest_memfd, size, 0).close()
    for size in (0, 1, P - 1, P + 1, 1 << 63, (1 << 64) - P, (1 << 64) - 1):
        ctx.expect_errno("EINVAL", vm.create_guest_memfd, size, 0)
    ctx.expect_ok(vm.create_guest_memfd, P, 0, (1, 0, 0, 0, 0, (1 << 64) - 1)).close()


@case("rk", profiles=(*LINUX, "rfc-v2"))
def rk_file_operations(ctx: Ctx) -> None:
    """#83-#104: read/write EINVAL, pread/pwrite/lseek ESPIPE, ftruncate EINVAL (size is fixed)."""
    vm = ctx.vm(0)
    g = vm.create_guest_memfd(4 * P, ctx.MMAP)
    ctx.expect_errno("EINVAL", g.read, 64)
    ctx.expect_errno("EINVAL", g.write, b"x" * 64)
    ctx.expect_errno("ESPIPE", g.pread, 64, 0)
    ctx.expect_errno("ESPIPE", g.pwrite, b"x" * 64, 0)
    ctx.expect_errno("ESPIPE", g.lseek, 0, 0)
    for length in (8 * P, P, 4 * P):
        ctx.expect_errno("EINVAL", g.ftruncate, length)
    ctx.check(g.fstat().st_size == 4 * P, "size unchanged")
    g.close()


@case("rk", profiles=LINUX)
def rk_mmap_rules(ctx: Ctx) -> None:
    """#114-#140: ENODEV without MMAP (even with INIT_SHARED), EINVAL MAP_PRIVATE/unaligned, EPERM exec,
    mapping past EOF allowed but touching it SIGBUS, PROT_READ write SIGSEGV."""
    vm = ctx.vm(0)
    for flags in (0, ctx.INIT_SHARED):
        g = vm.create_guest_memfd(4 * P, flags)
        ctx.expect_errno("ENODEV", g.mmap, P)
        ctx.expect_errno("ENODEV", g.mmap, 4 * P)
        g.close()
    g = vm.create_guest_memfd(4 * P, ctx.MMAP | ctx.INIT_SHARED)
    ctx.expect_errno("EINVAL", g.mmap, P, 0, PROT_READ | PROT_WRITE, MAP_PRIVATE)
    ctx.expect_errno("EINVAL", g.mmap, P, 0, PROT_READ, MAP_PRIVATE)
    ctx.expect_errno("EPERM", g.mmap, P, 0, PROT_READ | PROT_EXEC, MAP_SHARED)
    ctx.expect_errno("EINVAL", g.mmap, P, 100)
    for offset in (4 * P, 4 * P + (1 << 20), 1 << 62):
        m = ctx.expect_ok(g.mmap, P, offset)
        ctx.expect_sigbus(m.write, 0, b"x")
        m.munmap()
    ro = g.mmap(P, 0, PROT_READ)
    ctx.expect_bytes(ro.read(0, 8), bytes(8), "read through PROT_READ")
    ctx.expect_sigsegv(ro.write, 0, b"x")
    ro.munmap()
    a, b = g.mmap(4 * P), g.mmap(4 * P)
    a.write(100, b"coherent")
    ctx.expect_bytes(b.read(100, 8), b"coherent", "second mapping")
    a.munmap()
    b.munmap()
    c = g.mmap(4 * P)
    ctx.expect_bytes(c.read(100, 8), b"coherent", "data persists across munmap")
    c.munmap()
    g.close()


@case("rk", profiles=LINUX)
def rk_fallocate_modes(ctx: Ctx) -> None:
    """#175-#196: only KEEP_SIZE and PUNCH|KEEP; every other mode EOPNOTSUPP; EINVAL/EFBIG edges."""
    vm = ctx.vm(0)
    size = 16 * P
    g = vm.create_guest_memfd(size, ctx.MMAP | ctx.INIT_SHARED)
    ctx.expect_errno("EOPNOTSUPP", g.fallocate, 0, 0, P)
    ctx.expect_ok(g.fallocate, KEEP, 0, P)
    ctx.expect_ok(g.fallocate, KEEP, 0, size)
    ctx.expect_errno("EINVAL", g.fallocate, KEEP, size - P, 2 * P)
    ctx.expect_errno("EINVAL", g.fallocate, KEEP, 100, P)
    ctx.expect_errno("EINVAL", g.fallocate, KEEP, 0, 100)
    ctx.expect_errno("EOPNOTSUPP", g.fallocate, FALLOC_FL_PUNCH_HOLE, 0, P)
    ctx.expect_ok(g.fallocate, PUNCH, 0, P)
    ctx.expect_ok(g.fallocate, PUNCH, size - P, 4 * P)
    ctx.expect_ok(g.fallocate, PUNCH, 1 << 40, P)
    for mode in (FALLOC_FL_ZERO_RANGE, FALLOC_FL_ZERO_RANGE | KEEP, FALLOC_FL_COLLAPSE_RANGE,
                 FALLOC_FL_COLLAPSE_RANGE | KEEP, FALLOC_FL_INSERT_RANGE, FALLOC_FL_UNSHARE_RANGE | KEEP,
                 FALLOC_FL_WRITE_ZEROES, FALLOC_FL_NO_HIDE_STALE | PUNCH, 0x100 | KEEP):
        ctx.expect_errno("EOPNOTSUPP", g.fallocate, mode, 0, P)
    ctx.expect_errno("EINVAL", g.fallocate, KEEP, 0, 0)
    ctx.expect_errno("EINVAL", g.fallocate, KEEP, -P, P)
    ctx.expect_errno("EFBIG", g.fallocate, PUNCH, (1 << 63) - P, 2 * P)
    g.close()


@case("rk", profiles=LINUX)
def rk_punch_reads_zero(ctx: Ctx) -> None:
    """#197-#198: punched pages read zero through the mapping, neighbours kept, writes re-allocate."""
    vm = ctx.vm(0)
    g = vm.create_guest_memfd(4 * P, ctx.MMAP | ctx.INIT_SHARED)
    m = g.mmap(4 * P)
    m.fill(0, 4 * P, 0x77)
    ctx.expect_ok(g.fallocate, PUNCH, 2 * P, 2 * P)
    ctx.expect_bytes(m.read(2 * P, 2 * P), bytes(2 * P), "hole")
    ctx.expect_bytes(m.read(0, 2 * P), b"\x77" * 2 * P, "neighbours")
    m.write(2 * P, b"again")
    ctx.expect_bytes(m.read(2 * P, 5), b"again", "write into the hole")
    ctx.expect_ok(m.madvise, P, P, 9)  # MADV_REMOVE punches the file
    ctx.expect_bytes(m.read(P, 8), bytes(8), "after MADV_REMOVE")
    m.munmap()
    g.close()


@case("rk", profiles=LINUX)
def rk_binding_rules(ctx: Ctx) -> None:
    """#216-#259: every kvm_set_memory_region / kvm_gmem_bind rule this kernel enforces."""
    vm = ctx.vm(0)
    size = 16 * P
    g = vm.create_guest_memfd(size, ctx.MMAP | ctx.INIT_SHARED)
    gm = KVM_MEM_GUEST_MEMFD
    gpa = ctx.gpa_base(1 << 24)

    def bind(slot: int, flags: int, addr: int, length: int, off: int = 0, uaddr: int = 0, fd: object = g) -> None:
        vm.set_user_memory_region2(slot, flags, addr, length, userspace_addr=uaddr, guest_memfd=fd,
                                   guest_memfd_offset=off)

    ctx.expect_ok(bind, 1, gm, gpa, size)
    ctx.expect_ok(bind, 1, 0, gpa, 0)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, size, off=0x800)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, size, off=P)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, P, off=size)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, P, off=size + P)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, 2 * P, off=(1 << 64) - P)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, P, off=1 << 63)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, P + 1)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa + 1, P)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, P, uaddr=0x1001)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, P, uaddr=0xFFFF800000000000)
    ctx.expect_errno("EINVAL", bind, 32764, gm, gpa, P)
    # Address space 1 (SMM) exists on a default VM only with CONFIG_KVM_SMM (#229 is the kvm_pvm host, without).
    if vm.check_extension(Cap.MULTI_ADDRESS_SPACE) >= 2:
        ctx.expect_ok(bind, 1 | (1 << 16), gm, gpa, P)
        ctx.expect_ok(bind, 1 | (1 << 16), 0, gpa, 0)
    else:
        ctx.expect_errno("EINVAL", bind, 1 | (1 << 16), gm, gpa, P)
    ctx.expect_errno("EINVAL", bind, 1 | (2 << 16), gm, gpa, P)
    ctx.expect_errno("EINVAL", bind, 1, gm | KVM_MEM_READONLY, gpa, P)
    ctx.expect_errno("EINVAL", bind, 1, gm | KVM_MEM_LOG_DIRTY_PAGES, gpa, P)
    ctx.expect_errno("EINVAL", bind, 1, gm | (1 << 3), gpa, P)
    ctx.expect_errno("EINVAL", bind, 1, gm, 1 << 60, P)
    ctx.expect_errno("EBADF", bind, 1, gm, gpa, P, fd=-1)
    ctx.expect_errno("EINVAL", vm.set_user_memory_region, 1, gm, gpa, P, 0)
    ctx.expect_ok(bind, 1, 0, gpa, P, uaddr=0, fd=g)  # flags 0: the gmem fields are ignored
    ctx.expect_ok(bind, 1, 0, gpa, 0)
    ctx.expect_ok(bind, 1, gm, gpa, 8 * P)
    ctx.expect_errno(_overlap_errno(ctx), bind, 2, gm, gpa + (1 << 21), 8 * P, off=4 * P)
    ctx.expect_errno(_overlap_errno(ctx), bind, 2, gm, gpa + (1 << 21), 8 * P, off=0)
    ctx.expect_ok(bind, 2, gm, gpa + (1 << 21), 8 * P, off=8 * P)
    g2 = vm.create_guest_memfd(size, ctx.MMAP | ctx.INIT_SHARED)
    ctx.expect_errno("EEXIST", bind, 3, gm, gpa + 4 * P, P, fd=g2)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa, 8 * P)
    ctx.expect_errno("EINVAL", bind, 1, gm, gpa + (1 << 22), 8 * P)
    ctx.expect_errno("EINVAL", bind, 1, gm | KVM_MEM_LOG_DIRTY_PAGES, gpa, 8 * P)
    ctx.expect_ok(bind, 1, 0, gpa, 0)
    ctx.expect_errno("EINVAL", bind, 1, 0, gpa, 0)
    ctx.expect_ok(bind, 4, gm, gpa, 8 * P)
    other = ctx.system.create_vm(0)
    ctx.expect_errno("EINVAL", other.set_user_memory_region2, 1, gm, gpa, P, userspace_addr=0, guest_memfd=g,
                     guest_memfd_offset=0)
    closed_fd = g2.fd
    g2.close()
    ctx.expect_errno("EBADF", bind, 5, gm, gpa + (1 << 23), P, fd=closed_fd)
    g.close()
    ctx.expect_ok(bind, 4, 0, gpa, 0)
    ctx.expect_errno("EEXIST", bind, 6, 0, gpa + (1 << 21), P)
    ctx.expect_ok(bind, 2, 0, gpa + (1 << 21), 0)
    g3 = vm.create_guest_memfd(size, ctx.MMAP | ctx.INIT_SHARED)
    ctx.expect_ok(bind, 6, gm, gpa + (1 << 21), P, fd=g3)
    g3.close()


@case("rk", profiles=LINUX)
def rk_lifetime_vm_closed(ctx: Ctx) -> None:
    """#82: the gmem file pins the VM: after closing the VM fd, fallocate and mmap still work."""
    vm = ctx.vm(0)
    g = vm.create_guest_memfd(4 * P, ctx.MMAP | ctx.INIT_SHARED)
    vm.close()
    ctx.expect_ok(g.fallocate, KEEP, 0, 4 * P)
    ctx.expect_ok(g.fallocate, PUNCH, 0, 4 * P)
    m = ctx.expect_ok(g.mmap, 4 * P)
    m.write(0, b"still")
    ctx.expect_bytes(m.read(0, 5), b"still", "data after VM close")
    m.munmap()
    g.close()


def _guest_setup(
    ctx: Ctx, flags: int, npages: int, uaddr_mode: str = "gmem"
) -> tuple[Proxy, Proxy, Any, int, Proxy]:  # the mapping is None without MMAP
    vm = ctx.vm(0)
    g = vm.create_guest_memfd(npages * P, flags)
    m = g.mmap(npages * P) if flags & ctx.MMAP else None
    if uaddr_mode == "gmem" and m is not None:
        uaddr = m.address
    elif uaddr_mode == "anon":
        anon = ctx.system.mmap_anonymous(npages * P)
        anon.write(0x20, b"\x1a\xa1")
        uaddr = anon.address
    else:
        uaddr = 0
    gpa = _guest_memfd_slot(ctx, vm, g, npages * P, uaddr=uaddr)
    cpu = vm.create_vcpu(0)
    return vm, g, m, gpa, cpu


@case("rk", profiles=LINUX)
def rk_guest_access_gmem_only(ctx: Ctx) -> None:
    """#269-#276: guest reads host data, host sees guest writes, punch under the guest reads zero."""
    _vm, g, m, gpa, cpu = _guest_setup(ctx, ctx.MMAP | ctx.INIT_SHARED, 64)
    m.write(0x10, (0x1122334455667788).to_bytes(8, "little"))
    ctx.expect_bytes(cpu.read(gpa + 0x10, 8), (0x1122334455667788).to_bytes(8, "little"), "guest read")
    cpu.write(gpa + 0x1FF8, (0xFEEDFACECAFEF00D).to_bytes(8, "little"))
    ctx.expect_bytes(m.read(0x1FF8, 8), (0xFEEDFACECAFEF00D).to_bytes(8, "little"), "host view")
    cpu.write(gpa + 0x3000, b"\x55\x55")
    ctx.expect_ok(g.fallocate, PUNCH, 0x3000, P)
    ctx.expect_bytes(cpu.read(gpa + 0x3000, 8), bytes(8), "guest read after punch")
    m.write(0x3000, b"\xef\xcd\xab")
    ctx.expect_bytes(cpu.read(gpa + 0x3000, 3), b"\xef\xcd\xab", "guest read after host write")
    m.munmap()
    ctx.expect_bytes(cpu.read(gpa + 0x3000, 3), b"\xef\xcd\xab", "guest read after munmap")
    cpu.close()
    g.close()


@case("rk", profiles=LINUX)
def rk_guest_access_private_file(ctx: Ctx) -> None:
    """#280: MMAP without INIT_SHARED: the gmem-only slot serves the guest; the host cannot fault."""
    _vm, g, m, gpa, cpu = _guest_setup(ctx, ctx.MMAP, 16, uaddr_mode="none")
    ctx.expect_bytes(cpu.read(gpa + 0x20, 8), bytes(8), "guest read of fresh memory")
    ctx.expect_ok(cpu.write, gpa + 0x20, b"\x77")
    ctx.expect_sigbus(m.read, 0x20, 1)
    m.munmap()
    cpu.close()
    g.close()


@case("rk", profiles=LINUX)
def rk_guest_access_not_gmem_only(ctx: Ctx) -> None:
    """#281-#284: without MMAP the slot is served from userspace_addr: 0 -> EFAULT, anon -> anon memory.
    With in-place conversion on (v13, linux-7.md 1.1) every gmem slot is GMEM_ONLY: the guest reads gmem."""
    gmem_only = ctx.in_place()
    for flags in (0, ctx.INIT_SHARED):
        _vm, g, _, gpa, cpu = _guest_setup(ctx, flags, 16, uaddr_mode="none")
        if gmem_only:
            ctx.expect_bytes(cpu.read(gpa + 0x20, 8), bytes(8), "guest reads the gmem page")
        else:
            ex = ctx.expect_exit(cpu.read, gpa + 0x20, 8)
            ctx.check(ex.errno != 0, "KVM_RUN must fail")
        cpu.close()
        g.close()
        _vm, g, _, gpa, cpu = _guest_setup(ctx, flags, 16, uaddr_mode="anon")
        want = bytes(2) if gmem_only else b"\x1a\xa1"
        ctx.expect_bytes(cpu.read(gpa + 0x20, 2), want, "guest read through the slot")
        cpu.close()
        g.close()


@case("rk", profiles=LINUX)
def rk_two_slots_one_file(ctx: Ctx) -> None:
    """#286-#288: disjoint ranges of one gmem in two slots; data lives in the inode, not the slot."""
    vm = ctx.vm(0)
    g = vm.create_guest_memfd(64 * P, ctx.MMAP | ctx.INIT_SHARED)
    m = g.mmap(64 * P)
    base = ctx.gpa_base(1 << 23)
    gm = KVM_MEM_GUEST_MEMFD
    vm.set_user_memory_region2(1, gm, base, 16 * P, userspace_addr=m.address, guest_memfd=g, guest_memfd_offset=0)
    vm.set_user_memory_region2(2, gm, base + (1 << 21), 16 * P, userspace_addr=m.address + 16 * P,
                               guest_memfd=g, guest_memfd_offset=16 * P)
    cpu = vm.create_vcpu(0)
    cpu.write(base + 8, b"\xa1")
    cpu.write(base + (1 << 21) + 8, b"\xb2")
    ctx.expect_bytes(m.read(8, 1), b"\xa1", "file offset 8")
    ctx.expect_bytes(m.read(16 * P + 8, 1), b"\xb2", "file offset 64K+8")
    vm.set_user_memory_region2(2, 0, base + (1 << 21), 0)
    ex = ctx.expect_exit(cpu.read, base + (1 << 21) + 8, 8)
    ctx.check(ex.exit_reason == 6, f"deleted slot reads as MMIO, got {ex}")
    vm.set_user_memory_region2(3, gm, base + (1 << 21), 16 * P, userspace_addr=m.address + 16 * P,
                               guest_memfd=g, guest_memfd_offset=16 * P)
    ctx.expect_bytes(cpu.read(base + (1 << 21) + 8, 1), b"\xb2", "re-bound range")
    m.munmap()
    cpu.close()
    g.close()


@case("rk", profiles=LINUX)
def rk_release_memory_fault(ctx: Ctx) -> None:
    """#289-#294: close with a live mapping changes nothing; after munmap the guest gets MEMORY_FAULT."""
    vm, g, m, gpa, cpu = _guest_setup(ctx, ctx.MMAP | ctx.INIT_SHARED, 16)
    cpu.write(gpa, b"\x34\x12")
    g.close()
    ctx.expect_bytes(cpu.read(gpa, 2), b"\x34\x12", "guest read while the VMA holds the file")
    m.munmap()
    for page in (0, 1):
        ex = ctx.expect_exit(cpu.read, gpa + page * P, 8)
        ctx.check(ex.exit_reason == KVM_EXIT_MEMORY_FAULT, f"expected KVM_EXIT_MEMORY_FAULT, got {ex}")
        ctx.check((ex.gpa, ex.size, ex.flags) == (gpa + page * P, P, 0), f"memory fault payload {ex}")
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, 0)
    g2 = vm.create_guest_memfd(16 * P, ctx.MMAP | ctx.INIT_SHARED)
    m2 = g2.mmap(16 * P)
    _guest_memfd_slot(ctx, vm, g2, 16 * P, uaddr=m2.address, gpa=gpa)
    ctx.expect_bytes(cpu.read(gpa, 8), bytes(8), "fresh gmem at the same GPA")
    m2.munmap()
    cpu.close()
    g2.close()


@case("rk", profiles=LINUX)
def rk_plain_slot_on_gmem_mapping(ctx: Ctx) -> None:
    """#302-#303: a classic slot whose userspace_addr is a gmem mapping works via GUP unless private."""
    for flags, ok in ((ctx.MMAP | ctx.INIT_SHARED, True), (ctx.MMAP, False)):
        vm = ctx.vm(0)
        g = vm.create_guest_memfd(16 * P, flags)
        m = g.mmap(16 * P)
        gpa = ctx.gpa_base(16 * P)
        vm.set_user_memory_region2(1, 0, gpa, 16 * P, userspace_addr=m.address)
        cpu = vm.create_vcpu(0)
        if ok:
            m.write(0, b"\x51\x51")
            ctx.expect_bytes(cpu.read(gpa, 2), b"\x51\x51", "guest read through GUP")
        else:
            ex = ctx.expect_exit(cpu.read, gpa, 8)
            ctx.check(ex.errno != 0, f"KVM_RUN must fail, got {ex}")
        m.munmap()
        cpu.close()
        g.close()


@case("rk", profiles=LINUX)
def rk_mmap_offset_limits(ctx: Ctx) -> None:
    """Found by differential fuzzing: offset + length past MAX_LFS_FILESIZE is EOVERFLOW (file_mmap_ok),
    a negative offset included; up to the limit the mapping succeeds; length 0 is EINVAL."""
    vm = ctx.vm(0)
    g = vm.create_guest_memfd(4 * P, ctx.MMAP | ctx.INIT_SHARED)
    # MAX_LFS_FILESIZE is 2^63 - 1, so the last whole page that can be mapped starts at 2^63 - 2 pages.
    for offset, length in ((-P, P), (-2 * P, P), ((1 << 63) - P, P), ((1 << 63) - 2 * P, 2 * P)):
        ctx.expect_errno("EOVERFLOW", g.mmap, length, offset)
    for offset, length in (((1 << 63) - 2 * P, P), ((1 << 63) - 3 * P, 2 * P), (1 << 62, P)):
        ctx.expect_ok(g.mmap, length, offset).munmap()
    ctx.expect_errno("EINVAL", g.mmap, 0, 0)
    g.close()


@case("rk", profiles=LINUX)
def rk_madvise_remove_after_close(ctx: Ctx) -> None:
    """Found by differential fuzzing: MADV_REMOVE punches through a mapping even after the fd is closed
    (the VMA holds the file), and through a read-only mapping too (VM_MAYWRITE is what counts)."""
    vm = ctx.vm(0)
    g = vm.create_guest_memfd(4 * P, ctx.MMAP | ctx.INIT_SHARED)
    m = g.mmap(4 * P)
    ro = g.mmap(4 * P, 0, PROT_READ)
    m.fill(0, 4 * P, 0x33)
    ctx.expect_ok(ro.madvise, 3 * P, P, 9)
    ctx.expect_bytes(m.read(3 * P, 8), bytes(8), "after MADV_REMOVE through the read-only mapping")
    g.close()
    ctx.expect_ok(m.madvise, 0, P, 9)
    ctx.expect_bytes(m.read(0, 2 * P), bytes(P) + b"\x33" * P, "after MADV_REMOVE of page 0")
    ro.munmap()
    m.munmap()


@case("rk", profiles=LINUX)
def rk_mbind_single_node(ctx: Ctx) -> None:
    """#168 on any host: the policy round trip on node 0, EINVAL for a bad mode or an offline node, and
    move_pages showing -ENOENT before the first touch and node 0 after it."""
    vm = ctx.vm(0)
    g = vm.create_guest_memfd(4 * P, ctx.MMAP | ctx.INIT_SHARED)
    m = g.mmap(4 * P)
    ctx.check(m.page_nodes(0, 2) == [-2, -2], f"untouched pages {m.page_nodes(0, 2)}")
    m.write(0, b"x")
    ctx.check(m.page_nodes(0, 2) == [0, -2], f"after one touch {m.page_nodes(0, 2)}")
    for mode in (MPOL_INTERLEAVE, MPOL_BIND):
        ctx.expect_ok(m.mbind, 0, 2 * P, mode, 0x1)
        ctx.check(m.get_mempolicy(P) == (mode, 0x1), f"read back {m.get_mempolicy(P)}")
        ctx.check(m.get_mempolicy(2 * P) == (MPOL_DEFAULT, 0), "the rest keeps the default policy")
    ctx.expect_ok(m.mbind, 0, 4 * P, MPOL_DEFAULT, 0)
    ctx.check(m.get_mempolicy(0) == (MPOL_DEFAULT, 0), "DEFAULT read back")
    ctx.expect_errno("EINVAL", m.mbind, 0, P, 999, 0)
    ctx.expect_errno("EINVAL", m.mbind, 0, P, MPOL_BIND, 1 << 40)
    ctx.expect_errno("EINVAL", m.mbind, 0, P, MPOL_DEFAULT, 0x1)
    m.munmap()
    g.close()


@case("rk", profiles=LINUX)
def rk_mbind_modes(ctx: Ctx) -> None:
    """Found by differential fuzzing: MPOL_PREFERRED without nodes reads back as MPOL_LOCAL; mode flags come
    back with the mode; offline nodes are masked off (EINVAL only when none is left); relative masks fold."""
    vm = ctx.vm(0)
    g = vm.create_guest_memfd(4 * P, ctx.MMAP | ctx.INIT_SHARED)
    m = g.mmap(4 * P)
    online = (1 << ctx.system.nr_numa_nodes()) - 1
    static, relative = 1 << 15, 1 << 14
    ctx.expect_ok(m.mbind, 0, P, 1, 0)  # MPOL_PREFERRED, no node
    ctx.check(m.get_mempolicy(0) == (4, 0), f"PREFERRED() reads back {m.get_mempolicy(0)}, expected MPOL_LOCAL")
    ctx.expect_ok(m.mbind, 0, P, MPOL_BIND, online | (1 << 40))
    ctx.check(m.get_mempolicy(0) == (MPOL_BIND, online), f"offline nodes kept: {m.get_mempolicy(0)}")
    ctx.expect_ok(m.mbind, 0, P, MPOL_BIND | static, 0x3)
    ctx.check(m.get_mempolicy(0) == (MPOL_BIND | static, 0x3), f"static mask {m.get_mempolicy(0)}")
    ctx.expect_ok(m.mbind, 0, P, MPOL_INTERLEAVE | relative, 1 << 5)
    ctx.check(m.get_mempolicy(0) == (MPOL_INTERLEAVE | relative, 1 << 5), f"relative mask {m.get_mempolicy(0)}")
    ctx.expect_errno("EINVAL", m.mbind, 0, P, MPOL_BIND | static | relative, 0x1)
    ctx.expect_errno("EINVAL", m.mbind, 0, P, MPOL_INTERLEAVE | (1 << 13), 0x1)
    m.munmap()
    g.close()
