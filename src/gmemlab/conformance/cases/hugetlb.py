"""Conformance cases for HugeTLB-backed guest_memfd (RFC v2): the 2 MiB and 1 GiB runs of spec 3.5
(``guest_memfd_test.c`` battery: sizes, fstat, fallocate with st_blocks, mmap) and of spec 3.6
(``guest_memfd_conversions_test.c`` with ``test_page_size`` = 2M / 1G, where a "page" is a huge page).

Every case needs KVM_CAP_GMEM_HUGETLB (skipped with the cap named otherwise). Where the selftest walks
all 262,144 sub-pages of a 1 GiB page, these cases sample them (every 512th page plus the last) so the
suite stays fast; 2 MiB pages are walked whole.
"""

from __future__ import annotations

from ...uapi import (
    GUESTMEM_HUGETLB_FLAG_1GB,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    Cap,
    VmType,
)
from ..case import CaseList, Ctx
from ..constants import HUGETLB, KEEP, M2, PUNCH, RFC, SIZE_FLAGS, SIZES, SUPPORT_SHARED, P
from ..record import Proxy
from .fixtures import ConversionSetup, conversion_setup, rfc_battery, truncate_keeps_mappability

CASES = CaseList()
case = CASES.case


def _huge_flags(ps: int) -> int:
    return HUGETLB | SIZE_FLAGS[ps]


def _need_hugetlb(ctx: Ctx) -> None:
    ctx.require_cap(Cap.GMEM_HUGETLB)


def _sub_pages(ps: int) -> list[int]:
    """Sub-page numbers a case walks: all of a 2 MiB page, a sample of a 1 GiB page."""
    n = ps // P
    return list(range(n)) if n <= 512 else [*range(0, n, 512), n - 1]


def _battery(ctx: Ctx) -> list[tuple[Proxy, int]]:
    _need_hugetlb(ctx)
    return rfc_battery(ctx)


# -------------------------------------------------------------------------------------------------------
# 3.5 guest_memfd_test.c with HUGETLB|2MB and HUGETLB|1GB
# -------------------------------------------------------------------------------------------------------

for _name, _ps in SIZES.items():

    @case("3.5", profiles=RFC, name=f"test_hugetlb_create_and_file_size_{_name}", params={"ps": _ps})
    def test_hugetlb_create_and_file_size(ctx: Ctx, ps: int) -> None:
        """1 and 2 huge pages create distinct files; st_size = 4 pages, st_blksize = the huge page size;
        sizes 1, PAGE_SIZE/2 + 1 and one 4 KiB page (not a huge multiple) are EINVAL."""
        for vm, flags in _battery(ctx):
            f = flags | _huge_flags(ps)
            a, b = vm.create_guest_memfd(ps, f), vm.create_guest_memfd(2 * ps, f)
            ctx.check(a.fstat().st_ino != b.fstat().st_ino, "distinct inodes")
            a.close()
            b.close()
            g = vm.create_guest_memfd(4 * ps, f)
            st = g.fstat()
            ctx.check((st.st_size, st.st_blksize) == (4 * ps, ps), f"fstat {st}")
            ctx.check(st.st_blocks == 0, f"nothing allocated yet, st_blocks {st.st_blocks}")
            g.close()
            for size in (1, P // 2 + 1, P, ps + P):
                ctx.expect_errno("EINVAL", vm.create_guest_memfd, size, f)

    @case("3.5", profiles=RFC, name=f"test_hugetlb_fallocate_st_blocks_{_name}", params={"ps": _ps})
    def test_hugetlb_fallocate(ctx: Ctx, ps: int) -> None:
        """The fallocate sequence with page = huge page; st_blocks = allocated bytes / 512 after every
        step (patch 51); a 4 KiB punch inside a huge page zeroes it and frees nothing."""
        size = 4 * ps
        full = size // 512
        for vm, flags in _battery(ctx):
            g = vm.create_guest_memfd(size, flags | _huge_flags(ps))

            def blocks(want: int, what: str, g: Proxy = g) -> None:
                got = g.fstat().st_blocks
                ctx.check(got == want, f"st_blocks after {what}: {got}, expected {want}")

            ctx.expect_ok(g.fallocate, KEEP, 0, size)
            blocks(full, "allocating the file")
            ctx.expect_errno("EINVAL", g.fallocate, PUNCH, ps - 1, ps)
            ctx.expect_errno("EINVAL", g.fallocate, KEEP, size, ps)
            ctx.expect_errno("EINVAL", g.fallocate, KEEP, size + ps, ps)
            blocks(full, "failed calls")
            ctx.expect_ok(g.fallocate, PUNCH, size, ps)
            ctx.expect_ok(g.fallocate, PUNCH, size + ps, ps)
            ctx.expect_errno("EINVAL", g.fallocate, PUNCH, ps, ps - 1)
            ctx.expect_ok(g.fallocate, PUNCH, ps, ps)
            blocks(full - ps // 512, "punching one huge page")
            ctx.expect_ok(g.fallocate, PUNCH, ps, ps)
            blocks(full - ps // 512, "punching the hole again")
            ctx.expect_ok(g.fallocate, KEEP, ps, ps)
            blocks(full, "re-allocating")
            ctx.expect_ok(g.fallocate, PUNCH, 2 * ps + P, P)
            blocks(full, "a 4 KiB punch inside a huge page")
            ctx.expect_ok(g.fallocate, PUNCH, 0, size)
            ctx.expect_ok(g.fallocate, KEEP, 0, P)  # start and end rounded down: allocates nothing
            blocks(0, "allocating 4 KiB at offset 0 (rounded down to nothing)")
            g.close()

    @case("3.5", profiles=RFC, name=f"test_hugetlb_mmap_{_name}", params={"ps": _ps})
    def test_hugetlb_mmap(ctx: Ctx, ps: int) -> None:
        """SUPPORT_SHARED: mmap needs length and offset aligned to the huge page; host faults work
        (write/read each half huge page; punching page 0 reads back zeros, the rest stays)."""
        for vm, flags in _battery(ctx):
            if not flags & SUPPORT_SHARED:
                continue
            g = vm.create_guest_memfd(4 * ps, flags | _huge_flags(ps))
            ctx.expect_errno("EINVAL", g.mmap, P)
            ctx.expect_errno("EINVAL", g.mmap, ps, P)
            m = ctx.expect_ok(g.mmap, 4 * ps)
            for i in range(8):
                m.write(i * ps // 2, bytes([0x10 + i]))
            for i in range(8):
                ctx.expect_bytes(m.read(i * ps // 2, 1), bytes([0x10 + i]), f"half page {i}")
            ctx.expect_ok(g.fallocate, PUNCH, 0, ps)
            ctx.expect_bytes(m.read(ps // 2, 1), b"\0", "punched huge page")
            ctx.expect_bytes(m.read(ps, 1), b"\x12", "page 1 intact")
            m.munmap()
            g.close()


@case("3.5", profiles=RFC)
def test_hugetlb_flag_encoding(ctx: Ctx) -> None:
    """HUGETLB with an unknown page-size log (16 KiB = 14) is EINVAL; a file larger than the HugeTLB
    pool is ENOMEM; HUGETLB without SUPPORT_SHARED creates a file that cannot be mmapped."""
    _need_hugetlb(ctx)
    vm = ctx.vm(int(VmType.DEFAULT))
    ctx.expect_errno("EINVAL", vm.create_guest_memfd, M2, HUGETLB | (14 << 58))
    ctx.expect_errno("ENOMEM", vm.create_guest_memfd, 1 << 46, HUGETLB | GUESTMEM_HUGETLB_FLAG_1GB)
    g = ctx.expect_ok(vm.create_guest_memfd, M2, HUGETLB)
    ctx.expect_fail(g.mmap, M2)
    g.close()


# -------------------------------------------------------------------------------------------------------
# 3.6 guest_memfd_conversions_test.c with test_page_size 2M and 1G
# -------------------------------------------------------------------------------------------------------


def _setup(ctx: Ctx, ps: int, npages: int, init_private: bool = False) -> ConversionSetup:
    """The 3.6 fixture on ``npages`` huge pages; offsets are in bytes."""
    _need_hugetlb(ctx)
    return conversion_setup(ctx, npages, init_private, page_size=ps, extra_flags=_huge_flags(ps), unit=1)


def _register(func: object) -> None:
    for name, ps in SIZES.items():
        case("3.6", profiles=RFC, name=f"{func.__name__}_{name}", params={"ps": ps})(func)  # type: ignore[attr-defined, arg-type]


def test_sharing(ctx: Ctx, ps: int) -> None:
    """A -> guest B -> private (host SIGBUS, guest C) -> shared (host D, guest E), one huge page."""
    s = _setup(ctx, ps, 1)
    s.host(ctx, 0, write=b"A")
    s.guest(ctx, 0, b"A", b"B")
    s.convert(ctx, 0, ps, False)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, b"B", b"C")
    s.convert(ctx, 0, ps, True)
    s.host(ctx, 0, b"C", b"D")
    s.guest(ctx, 0, b"D", b"E")
    s.close()


def test_init_mappable_false(ctx: Ctx, ps: int) -> None:
    """INIT_PRIVATE: host SIGBUS; guest writes A; convert shared; host reads A writes B; guest reads B."""
    s = _setup(ctx, ps, 1, init_private=True)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, write=b"A")
    s.convert(ctx, 0, ps, True)
    s.host(ctx, 0, b"A", b"B")
    s.guest(ctx, 0, b"B")
    s.close()


def test_conversion_before_allocation(ctx: Ctx, ps: int) -> None:
    """Convert private before any folio exists; host SIGBUS; guest A; convert shared; host reads A."""
    s = _setup(ctx, ps, 1)
    s.convert(ctx, 0, ps, False)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, write=b"A")
    s.convert(ctx, 0, ps, True)
    s.host(ctx, 0, b"A")
    s.close()


def test_conversion_if_not_all_folios_allocated(ctx: Ctx, ps: int) -> None:
    """16 huge pages; host touches page i and page 8; whole-file conversions both ways keep the data."""
    n = 16
    for i in range(n):
        s = _setup(ctx, ps, n)
        s.host(ctx, i * ps, write=b"A")
        s.host(ctx, n // 2 * ps, write=b"A")
        s.convert(ctx, 0, n * ps, False)
        for page in range(n):
            s.host_cannot_fault(ctx, page * ps)
            s.guest(ctx, page * ps, b"A" if page in (i, n // 2) else None, b"B")
        s.convert(ctx, 0, n * ps, True)
        for page in range(n):
            s.host(ctx, page * ps, b"B", b"C")
            s.guest(ctx, page * ps, b"C")
        s.close()


def test_conversions_should_not_affect_surrounding_pages(ctx: Ctx, ps: int) -> None:
    """Converting huge page 2 of 4 private leaves its neighbours host-accessible; back again."""
    s = _setup(ctx, ps, 4)
    for page in range(4):
        s.host(ctx, page * ps, write=b"A")
        s.guest(ctx, page * ps, b"A", b"B")
    s.convert(ctx, 2 * ps, ps, False)
    for page in range(4):
        if page == 2:
            s.host_cannot_fault(ctx, page * ps)
            s.guest(ctx, page * ps, b"B")
        else:
            s.host(ctx, page * ps, b"B")
    s.convert(ctx, 2 * ps, ps, True)
    for page in range(4):
        s.host(ctx, page * ps, b"B", b"C")
        s.guest(ctx, page * ps, b"C")
    s.close()


def test_conversions_should_fail_if_memory_has_elevated_refcount(ctx: Ctx, ps: int) -> None:
    """A pin on huge page k makes convert-private EAGAIN with error_offset = k * page size."""
    for k in range(4):
        s = _setup(ctx, ps, 4)
        for page in range(4):
            s.host(ctx, page * ps, write=b"A")
        pin = ctx.expect_ok(s.mapping.pin, k * ps, P)
        err = ctx.expect_errno("EAGAIN", s.gmem.convert, k * ps, ps, False)
        off = getattr(err, "error_offset", None)
        ctx.check(off == k * ps, f"error_offset {off}, expected {k * ps:#x}")
        pin.unpin()
        s.convert(ctx, k * ps, ps, False)
        s.host_cannot_fault(ctx, k * ps)
        s.guest(ctx, k * ps, b"A", b"G")
        s.convert(ctx, k * ps, ps, True)
        s.host(ctx, k * ps, b"G")
        s.close()


def test_truncate_should_not_change_mappability(ctx: Ctx, ps: int) -> None:
    """Punching keeps shareability: shared page re-faults zero; private page stays host-unfaultable."""
    truncate_keeps_mappability(ctx, _setup(ctx, ps, 1))


def test_fault_type_independent_of_mem_attributes(ctx: Ctx, ps: int) -> None:
    """The gmem decides private-ness for SUPPORT_SHARED slots; the VM attribute is ignored."""
    s = _setup(ctx, ps, 1, init_private=True)
    ctx.require_cap(Cap.MEMORY_ATTRIBUTES, on=s.vm, mask=KVM_MEMORY_ATTRIBUTE_PRIVATE)
    ctx.expect_ok(s.vm.set_memory_attributes, s.gpa, ps, 0)
    s.host_cannot_fault(ctx, 0)
    s.guest(ctx, 0, write=b"A")
    s.convert(ctx, 0, ps, True)
    ctx.expect_ok(s.vm.set_memory_attributes, s.gpa, ps, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    s.host(ctx, 0, b"A", b"B")
    s.guest(ctx, 0, b"B", b"C")
    s.close()


def test_truncate_shared_while_pinned(ctx: Ctx, ps: int) -> None:
    """Allocate; pin the huge page; punch -> EAGAIN (merge needs safe refcounts); unpin; punch works.

    The selftest pins the whole page; one pinned 4 KiB page (the first) raises the folio refcount
    just the same and keeps the 1 GiB run fast."""
    s = _setup(ctx, ps, 1)
    ctx.expect_ok(s.gmem.fallocate, KEEP, 0, ps)
    pin = ctx.expect_ok(s.mapping.pin, 0, ps if ps <= M2 else P)
    ctx.expect_errno("EAGAIN", s.gmem.fallocate, PUNCH, 0, ps)
    pin.unpin()
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, ps)
    s.close()


def test_truncate_private(ctx: Ctx, ps: int) -> None:
    """INIT_PRIVATE, allocate, punch: succeeds (no merge needed)."""
    s = _setup(ctx, ps, 1, init_private=True)
    ctx.expect_ok(s.gmem.fallocate, KEEP, 0, ps)
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, ps)
    s.close()


def test_close_with_pinning(ctx: Ctx, ps: int) -> None:
    """Closing everything while a pin is still held must not fail; unpinning afterwards works."""
    s = _setup(ctx, ps, 1)
    s.host(ctx, 0, write=b"A")
    pin = ctx.expect_ok(s.mapping.pin, 0, P)
    s.close()
    pin.unpin()


def test_allocate_subfolios(ctx: Ctx, ps: int) -> None:
    """Host writes distinct values to sub-pages in descending order, then reads each back."""
    s = _setup(ctx, ps, 1)
    subs = _sub_pages(ps)
    for i in reversed(subs):
        s.host(ctx, i * P, write=(i % 251 + 1).to_bytes(1, "little"))
    for i in subs:
        s.host(ctx, i * P, (i % 251 + 1).to_bytes(1, "little"))
    s.close()


def test_convert_subfolios(ctx: Ctx, ps: int) -> None:
    """INIT_PRIVATE: the guest writes sub-pages; converting one 4 KiB sub-page shared lets the host
    reach only that one (seeing the guest's data); converting it back keeps the guest data."""
    s = _setup(ctx, ps, 1, init_private=True)
    subs = _sub_pages(ps)
    for i in subs:
        s.guest(ctx, i * P, write=(i % 251 + 1).to_bytes(1, "little"))
    k = subs[len(subs) // 2]
    s.convert(ctx, k * P, P, True)
    for i in subs:
        if i == k:
            s.host(ctx, i * P, (i % 251 + 1).to_bytes(1, "little"))
        else:
            s.host_cannot_fault(ctx, i * P)
    s.convert(ctx, k * P, P, False)
    for i in subs:
        s.host_cannot_fault(ctx, i * P)
        s.guest(ctx, i * P, (i % 251 + 1).to_bytes(1, "little"))
    s.close()


for _func in (
    test_sharing,
    test_init_mappable_false,
    test_conversion_before_allocation,
    test_conversion_if_not_all_folios_allocated,
    test_conversions_should_not_affect_surrounding_pages,
    test_conversions_should_fail_if_memory_has_elevated_refcount,
    test_truncate_should_not_change_mappability,
    test_fault_type_independent_of_mem_attributes,
    test_truncate_shared_while_pinned,
    test_truncate_private,
    test_close_with_pinning,
    test_allocate_subfolios,
    test_convert_subfolios,
):
    _register(_func)
