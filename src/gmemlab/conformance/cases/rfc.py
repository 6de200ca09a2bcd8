"""Conformance cases for the seed's RFC v2 (spec 3.5 guest_memfd_test.c, the 4 KiB cases of 3.6
guest_memfd_conversions_test.c, and the argument checks of 2.14).

The 3.6 setup: a SW_PROTECTED VM, a SUPPORT_SHARED gmem (optionally INIT_PRIVATE) mmapped MAP_SHARED and
used as the userspace_addr of slot 10 at GPA 4 GiB; "host cannot fault" is a SIGBUS on the mapping.
"""

from __future__ import annotations

from ...uapi import (
    KVM_MEM_GUEST_MEMFD,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    Cap,
    VmType,
)
from ..case import CaseList, Ctx
from ..constants import HUGETLB, INIT_PRIVATE, INVALID_PUNCHES, KEEP, PUNCH, RFC, SUPPORT_SHARED, P
from .fixtures import ConversionSetup, conversion_setup, need_conversion, rfc_battery, truncate_keeps_mappability

CASES = CaseList()
case = CASES.case

# -------------------------------------------------------------------------------------------------------
# 3.5 guest_memfd_test.c (RFC v2)
# -------------------------------------------------------------------------------------------------------


@case("3.5", profiles=RFC)
def test_gmem_flag_validity(ctx: Ctx) -> None:
    """Every VM type: a single bit is valid iff SUPPORT_SHARED (or HUGETLB with its cap);
    SUPPORT_SHARED|INIT_PRIVATE valid, INIT_PRIVATE alone EINVAL."""
    need_conversion(ctx)
    hugetlb = ctx.system.check_extension(Cap.GMEM_HUGETLB)
    for vm_type in ctx.system.vm_types():
        vm = ctx.system.create_vm(int(vm_type))
        for bit in range(64):
            flag = 1 << bit
            if flag == SUPPORT_SHARED or (flag == HUGETLB and hugetlb):
                ctx.expect_ok(vm.create_guest_memfd, 1 << 21, flag).close()
            else:
                ctx.expect_errno("EINVAL", vm.create_guest_memfd, P, flag)
        ctx.expect_ok(vm.create_guest_memfd, P, SUPPORT_SHARED | INIT_PRIVATE).close()
        vm.close()


@case("3.5", profiles=RFC)
def test_bind_guest_memfd_wrt_userspace_addr(ctx: Ctx) -> None:
    """SUPPORT_SHARED bind: userspace_addr must be 0 or map this gmem at guest_memfd_offset."""
    ctx.require_cap(Cap.GMEM_SHARED_MEM)
    vm = ctx.vm(int(VmType.DEFAULT))
    size = 2 * P
    g = vm.create_guest_memfd(size, SUPPORT_SHARED)
    gpa = ctx.gpa_base(size)
    gm = KVM_MEM_GUEST_MEMFD

    def bind(uaddr: int, length: int = P, off: int = 0) -> None:
        vm.set_user_memory_region2(1, gm, gpa, length, userspace_addr=uaddr, guest_memfd=g, guest_memfd_offset=off)

    ctx.expect_ok(bind, 0, size)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, 0)
    anon = ctx.system.mmap_anonymous(size)
    ctx.expect_errno("EINVAL", bind, anon.address)
    other = vm.create_guest_memfd(size, SUPPORT_SHARED)
    om = other.mmap(size)
    ctx.expect_errno("EINVAL", bind, om.address)
    shifted = g.mmap(P, P)
    ctx.expect_errno("EINVAL", bind, shifted.address)
    ctx.expect_ok(bind, shifted.address, P, P)
    ctx.expect_ok(vm.set_user_memory_region2, 1, 0, gpa, 0)
    for m in (anon, om, shifted):
        m.munmap()
    other.close()
    g.close()


@case("3.5", profiles=RFC, name="test_rfc_create_multiple_and_sizes")
def test_rfc_create(ctx: Ctx) -> None:
    """1- and 2-page files with distinct inodes; sizes 1 and PAGE_SIZE/2 + 1 are EINVAL."""
    for vm, flags in rfc_battery(ctx):
        a, b = vm.create_guest_memfd(P, flags), vm.create_guest_memfd(2 * P, flags)
        ctx.check((a.fstat().st_size, b.fstat().st_size) == (P, 2 * P), "sizes")
        ctx.check(a.fstat().st_ino != b.fstat().st_ino, "distinct inodes")
        for size in (1, P // 2 + 1):
            ctx.expect_errno("EINVAL", vm.create_guest_memfd, size, flags)
        a.close()
        b.close()


@case("3.5", profiles=RFC, name="test_rfc_file_read_write_and_size")
def test_rfc_file_ops(ctx: Ctx) -> None:
    """read/write/pread/pwrite fail; st_size = 4 pages, st_blksize = PAGE_SIZE."""
    for vm, flags in rfc_battery(ctx):
        g = vm.create_guest_memfd(4 * P, flags)
        for fn, args in ((g.read, (8,)), (g.write, (b"x",)), (g.pread, (8, 0)), (g.pwrite, (b"x", 0))):
            ctx.expect_fail(fn, *args)
        st = g.fstat()
        ctx.check((st.st_size, st.st_blksize) == (4 * P, P), f"fstat {st}")
        g.close()


@case("3.5", profiles=RFC, name="test_mmap_allowed_denied")
def test_rfc_mmap(ctx: Ctx) -> None:
    """MAP_SHARED mmap succeeds with SUPPORT_SHARED and fails (1 page and whole file) without."""
    for vm, flags in rfc_battery(ctx):
        g = vm.create_guest_memfd(4 * P, flags)
        if flags & SUPPORT_SHARED:
            ctx.expect_ok(g.mmap, 4 * P).munmap()
        else:
            ctx.expect_fail(g.mmap, P)
            ctx.expect_fail(g.mmap, 4 * P)
        g.close()


@case("3.5", profiles=RFC)
def test_faulting_allowed(ctx: Ctx) -> None:
    """Shared by default: write/read every half page; punch page 0 -> zeros there, rest intact."""
    for vm, flags in rfc_battery(ctx):
        if not flags & SUPPORT_SHARED:
            continue
        g = vm.create_guest_memfd(4 * P, flags)
        m = g.mmap(4 * P)
        for i in range(8):
            m.write(i * P // 2, bytes([0x10 + i]))
        for i in range(8):
            ctx.expect_bytes(m.read(i * P // 2, 1), bytes([0x10 + i]), f"half page {i}")
        ctx.expect_ok(g.fallocate, PUNCH, 0, P)
        ctx.expect_bytes(m.read(0, P), bytes(P), "punched page")
        ctx.expect_bytes(m.read(P, 1), b"\x12", "page 1 intact")
        m.write(0, b"\x99")
        ctx.expect_bytes(m.read(0, 1), b"\x99", "rewrite")
        m.munmap()
        g.close()


@case("3.5", profiles=RFC)
def test_faulting_sigbus(ctx: Ctx) -> None:
    """SUPPORT_SHARED|INIT_PRIVATE: mmap succeeds but a write SIGBUSes."""
    for vm, flags in rfc_battery(ctx):
        if not flags & SUPPORT_SHARED:
            continue
        g = vm.create_guest_memfd(4 * P, flags | INIT_PRIVATE)
        m = ctx.expect_ok(g.mmap, 4 * P)
        ctx.expect_sigbus(m.write, 0, b"x")
        m.munmap()
        g.close()


@case("3.5", profiles=RFC, name="test_rfc_fallocate_and_punch")
def test_rfc_fallocate(ctx: Ctx) -> None:
    """The fallocate sequence and the ten invalid punches, per VM type and flags."""
    size = 4 * P
    for vm, flags in rfc_battery(ctx):
        g = vm.create_guest_memfd(size, flags)
        ctx.expect_ok(g.fallocate, KEEP, 0, size)
        ctx.expect_errno("EINVAL", g.fallocate, PUNCH, P - 1, P)
        ctx.expect_errno("EINVAL", g.fallocate, KEEP, size, P)
        ctx.expect_ok(g.fallocate, PUNCH, size, P)
        ctx.expect_ok(g.fallocate, PUNCH, P, P)
        ctx.expect_ok(g.fallocate, KEEP, P, P)
        for off, length in INVALID_PUNCHES:
            ctx.expect_errno("EINVAL", g.fallocate, PUNCH, off, length)
        g.close()


# -------------------------------------------------------------------------------------------------------
# 3.6 guest_memfd_conversions_test.c, 4 KiB pages
# -------------------------------------------------------------------------------------------------------


def _setup(ctx: Ctx, npages: int, init_private: bool = False) -> ConversionSetup:
    return conversion_setup(ctx, npages, init_private)


@case("3.6", profiles=RFC)
def test_sharing(ctx: Ctx) -> None:
    """A -> guest B -> private (host SIGBUS, guest C) -> shared (host D, guest E)."""
    s = _setup(ctx, 1)
    s.host(ctx, 0, write=b"A")
    s.guest(ctx, 0, b"A", b"B")
    s.convert(ctx, 0, 1, False)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, b"B", b"C")
    s.convert(ctx, 0, 1, True)
    s.host(ctx, 0, b"C", b"D")
    s.guest(ctx, 0, b"D", b"E")
    s.close()


@case("3.6", profiles=RFC)
def test_init_mappable_false(ctx: Ctx) -> None:
    """INIT_PRIVATE: host SIGBUS; guest writes A; convert shared; host reads A writes B; guest reads B."""
    s = _setup(ctx, 1, init_private=True)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, write=b"A")
    s.convert(ctx, 0, 1, True)
    s.host(ctx, 0, b"A", b"B")
    s.guest(ctx, 0, b"B")
    s.close()


@case("3.6", profiles=RFC)
def test_conversion_before_allocation(ctx: Ctx) -> None:
    """Convert private before any page exists; host SIGBUS; guest writes A; convert shared; host reads A."""
    s = _setup(ctx, 1)
    s.convert(ctx, 0, 1, False)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, write=b"A")
    s.convert(ctx, 0, 1, True)
    s.host(ctx, 0, b"A")
    s.close()


@case("3.6", profiles=RFC)
def test_conversion_if_not_all_folios_allocated(ctx: Ctx) -> None:
    """16 pages, host touches page i and page 8, whole-file conversions both ways keep the data."""
    n = 16
    for i in range(n):
        s = _setup(ctx, n)
        s.host(ctx, i, write=b"A")
        s.host(ctx, n // 2, write=b"A")
        s.convert(ctx, 0, n, False)
        for page in range(n):
            s.host_cannot_fault(ctx, page)
            s.guest(ctx, page, b"A" if page in (i, n // 2) else None, b"B")
        s.convert(ctx, 0, n, True)
        for page in range(n):
            s.host(ctx, page, b"B", b"C")
            s.guest(ctx, page, b"C")
        s.close()


@case("3.6", profiles=RFC)
def test_conversions_should_not_affect_surrounding_pages(ctx: Ctx) -> None:
    """Converting page 2 of 4 private leaves its neighbours host-accessible; converting back restores it."""
    s = _setup(ctx, 4)
    for page in range(4):
        s.host(ctx, page, write=b"A")
        s.guest(ctx, page, b"A", b"B")
    s.convert(ctx, 2, 1, False)
    for page in range(4):
        if page == 2:
            s.host_cannot_fault(ctx, page)
            s.guest(ctx, page, b"B")
        else:
            s.host(ctx, page, b"B")
    s.convert(ctx, 2, 1, True)
    for page in range(4):
        s.host(ctx, page, b"B", b"C")
        s.guest(ctx, page, b"C")
    s.close()


@case("3.6", profiles=RFC)
def test_conversions_should_fail_if_memory_has_elevated_refcount(ctx: Ctx) -> None:
    """A long-term pin on page k makes convert-private EAGAIN with error_offset k * PAGE_SIZE."""
    for k in range(4):
        s = _setup(ctx, 4)
        for page in range(4):
            s.host(ctx, page, write=b"A")
        pin = ctx.expect_ok(s.mapping.pin, k * P, P)
        err = ctx.expect_errno("EAGAIN", s.gmem.convert, k * P, P, False)
        ctx.check(getattr(err, "error_offset", None) == k * P, f"error_offset {getattr(err, 'error_offset', None)}")
        pin.unpin()
        s.convert(ctx, k, 1, False)
        s.host_cannot_fault(ctx, k)
        s.guest(ctx, k, b"A", b"G")
        s.convert(ctx, k, 1, True)
        s.host(ctx, k, b"G")
        s.close()


@case("3.6", profiles=RFC)
def test_truncate_should_not_change_mappability(ctx: Ctx) -> None:
    """Punching keeps shareability: shared page re-faults zero; private page stays host-unfaultable."""
    truncate_keeps_mappability(ctx, _setup(ctx, 1))


@case("3.6", profiles=RFC)
def test_fault_type_independent_of_mem_attributes(ctx: Ctx) -> None:
    """The gmem decides private-ness for SUPPORT_SHARED slots; the VM attribute is ignored."""
    s = _setup(ctx, 1, init_private=True)
    ctx.require_cap(Cap.MEMORY_ATTRIBUTES, on=s.vm, mask=KVM_MEMORY_ATTRIBUTE_PRIVATE)
    ctx.expect_ok(s.vm.set_memory_attributes, s.gpa, P, 0)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, write=b"A")
    s.convert(ctx, 0, 1, True)
    ctx.expect_ok(s.vm.set_memory_attributes, s.gpa, P, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    s.host(ctx, 0, b"A", b"B")
    s.guest(ctx, 0, b"B", b"C")
    s.close()


@case("3.6", profiles=RFC)
def test_truncate_shared_while_pinned(ctx: Ctx) -> None:
    """4 KiB: punching a pinned shared page succeeds (no merge needed); unpin; punch again."""
    s = _setup(ctx, 1)
    ctx.expect_ok(s.gmem.fallocate, KEEP, 0, P)
    pin = ctx.expect_ok(s.mapping.pin, 0, P)
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, P)
    pin.unpin()
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, P)
    s.close()


@case("3.6", profiles=RFC)
def test_truncate_private(ctx: Ctx) -> None:
    """INIT_PRIVATE, allocate, punch: succeeds."""
    s = _setup(ctx, 1, init_private=True)
    ctx.expect_ok(s.gmem.fallocate, KEEP, 0, P)
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, P)
    s.close()


@case("3.6", profiles=RFC)
def test_close_with_pinning(ctx: Ctx) -> None:
    """Closing everything while a pin is still held must not fail."""
    s = _setup(ctx, 1)
    s.host(ctx, 0, write=b"A")
    pin = ctx.expect_ok(s.mapping.pin, 0, P)
    s.close()
    pin.unpin()


# -------------------------------------------------------------------------------------------------------
# 2.14 conversion argument validation and work-list semantics
# -------------------------------------------------------------------------------------------------------


@case("2.14", profiles=RFC)
def test_convert_argument_order(ctx: Ctx) -> None:
    """error_offset != 0 -> EINVAL before size 0 -> no-op; range past i_size and unaligned -> EINVAL."""
    need_conversion(ctx)
    vm = ctx.vm(int(VmType.DEFAULT))
    g = vm.create_guest_memfd(4 * P, SUPPORT_SHARED)
    ctx.expect_errno("EINVAL", g.convert, 0, 0, False, 1)
    ctx.expect_ok(g.convert, 0, 0, False)
    ctx.expect_ok(g.convert, 5 * P, 0, False)  # size 0 returns before any range check
    ctx.expect_errno("EINVAL", g.convert, 5 * P, P, False)
    ctx.expect_errno("EINVAL", g.convert, 3 * P, 2 * P, False)
    ctx.expect_errno("EINVAL", g.convert, (1 << 64) - P, 2 * P, True)
    ctx.expect_errno("EINVAL", g.convert, 1, P, False)
    ctx.expect_errno("EINVAL", g.convert, 0, P + 1, True)
    ctx.expect_errno("EINVAL", g.convert, 0, 5 * P, True)
    ctx.expect_ok(g.convert, 0, 4 * P, False)
    ctx.expect_ok(g.convert, 0, 4 * P, False)  # already private: empty work list
    g.close()


@case("2.14", profiles=RFC)
def test_convert_before_binding_and_huge_file(ctx: Ctx) -> None:
    """Shareability is per inode: convertible with no memslot; a 1 TiB file converts in one call."""
    need_conversion(ctx)
    vm = ctx.vm(int(VmType.DEFAULT))
    g = vm.create_guest_memfd(1 << 40, SUPPORT_SHARED)
    m = g.mmap(2 * P, (1 << 40) - 2 * P)
    m.write(P, b"end")
    ctx.expect_ok(g.convert, 0, 1 << 40, False)
    ctx.expect_sigbus(m.read, P, 1)
    ctx.expect_ok(g.convert, 0, 1 << 40, True)
    ctx.expect_bytes(m.read(P, 3), b"end", "content preserved across conversions")
    m.munmap()
    g.close()


@case("2.14", profiles=RFC)
def test_convert_without_support_shared(ctx: Ctx) -> None:
    """No SUPPORT_SHARED check (spec 5.6): the stitched tree has no shareability and succeeds silently."""
    need_conversion(ctx)
    vm = ctx.vm(int(VmType.DEFAULT))
    g = vm.create_guest_memfd(4 * P, 0)
    ctx.expect_ok(g.convert, 0, 4 * P, True)
    ctx.expect_ok(g.convert, 0, 4 * P, False)
    g.close()
