"""Conformance cases for in-place conversion (``linux-7.4``; linux-7.md section 1).

* ``x86/guest_memfd_conversions_test.c`` as linux-7.md 1.4 lists it (the fixture: a SW_PROTECTED VM, a gmem
  slot at GPA 4 GiB whose ``userspace_addr`` is the gmem's own mapping; needs
  ``KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES & PRIVATE``);
* one case per step of ``kvm_gmem_set_attributes()`` (linux-7.md 1.2);
* the in-place modes of ``x86/private_mem_conversions_test.c`` and ``x86/private_mem_kvm_exits_test.c``;
* the module parameter's two values.

Conversions use ``KVM_SET_MEMORY_ATTRIBUTES2`` on the gmem fd. The struct's ``error_offset`` goes in as a
non-zero canary, as the recording probe did (realkernel-private.md): v13 and v8 both leave it untouched
except for EAGAIN/ENOMEM.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConversionError
from ...uapi import (
    KVM_EXIT_MMIO,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_SET_MEMORY_ATTRIBUTES,
    KVM_SET_MEMORY_ATTRIBUTES2,
    Cap,
    VmType,
    cap_guest_memfd_memory_attributes,
)
from ..case import CaseList, Ctx
from ..constants import IN_PLACE, KEEP, M2, PUNCH, P
from ..convert import IN_PLACE as IN_PLACE_MECHANISM
from ..convert import convert, mechanism

CASES = CaseList()
case = CASES.case

PRIVATE = KVM_MEMORY_ATTRIBUTE_PRIVATE
CANARY = 0xE0E0E0E0E0  # the probe's input error_offset: non-zero on purpose (realkernel-private.md)
MMAP, INIT_SHARED = 1 << 0, 1 << 1
SLOT = 1


def need_in_place(ctx: Ctx, on: object = None) -> None:
    """Skip unless in-place conversion is on (the selftest's requirement), printing the value read."""
    cap = cap_guest_memfd_memory_attributes()
    value = (on or ctx.system).check_extension(cap)  # type: ignore[attr-defined]
    if not value & PRIVATE:
        where = "this VM" if on is not None else "/dev/kvm"
        ctx.skip(f"needs KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES ({cap}) & PRIVATE, which is {value:#x} on {where}")


def expect_converted(ctx: Ctx, gmem: object, offset: int, size: int, private: bool) -> None:
    """A conversion that must succeed and leave error_offset as it was given."""
    out = ctx.expect_ok(gmem.set_memory_attributes2, offset, size, PRIVATE if private else 0,  # type: ignore[attr-defined]
                        error_offset=CANARY)
    ctx.check(out == CANARY, f"error_offset {out:#x} after a successful conversion, expected it untouched")


def expect_refused(ctx: Ctx, err: str, gmem: object, *args: int, want_offset: int | None = None,
                   **kwargs: object) -> ConversionError:
    """A conversion refused with ``err`` whose struct reads ``want_offset`` afterwards (default: the
    ``error_offset`` given, the canary unless the caller passes one)."""
    kwargs.setdefault("error_offset", CANARY)
    want = kwargs["error_offset"] if want_offset is None else want_offset
    exc = ctx.expect_errno(err, gmem.set_memory_attributes2, *args, **kwargs)  # type: ignore[attr-defined]
    got = getattr(exc, "error_offset", None)
    ctx.check(got == want, f"error_offset {got!r} after {err}, expected {want:#x}")
    return exc  # type: ignore[return-value]


@dataclass
class InPlace:
    """The conversions selftest fixture."""

    vm: object
    gmem: object
    mapping: object
    cpu: object
    gpa: int
    npages: int

    def host(self, ctx: Ctx, page: int, expect: bytes | None = None, write: bytes | None = None) -> None:
        if expect is not None:
            ctx.expect_bytes(ctx.expect_ok(self.mapping.read, page * P, len(expect)), expect,  # type: ignore[attr-defined]
                             f"host read of page {page}")
        if write is not None:
            ctx.expect_ok(self.mapping.write, page * P, write)  # type: ignore[attr-defined]

    def guest(self, ctx: Ctx, page: int, expect: bytes | None = None, write: bytes | None = None) -> None:
        if expect is not None:
            ctx.expect_bytes(ctx.expect_ok(self.cpu.read, self.gpa + page * P, len(expect)), expect,  # type: ignore[attr-defined]
                             f"guest read of page {page}")
        if write is not None:
            ctx.expect_ok(self.cpu.write, self.gpa + page * P, write)  # type: ignore[attr-defined]

    def host_sigbus(self, ctx: Ctx, page: int) -> None:
        ctx.expect_sigbus(self.mapping.read, page * P, 1)  # type: ignore[attr-defined]
        ctx.expect_sigbus(self.mapping.write, page * P, b"Z")  # type: ignore[attr-defined]

    def convert(self, ctx: Ctx, page: int, count: int, private: bool) -> None:
        expect_converted(ctx, self.gmem, page * P, count * P, private)

    def close(self) -> None:
        self.mapping.munmap()  # type: ignore[attr-defined]
        self.cpu.close()  # type: ignore[attr-defined]
        self.gmem.close()  # type: ignore[attr-defined]


def in_place_setup(ctx: Ctx, npages: int, init_shared: bool) -> InPlace:
    """``KVM_X86_SW_PROTECTED_VM``, a gmem of ``npages`` (MMAP, INIT_SHARED if asked) mapped MAP_SHARED and
    bound at GPA 4 GiB with the mapping as ``userspace_addr``, one vCPU."""
    need_in_place(ctx)
    vm = ctx.vm(int(VmType.SW_PROTECTED))
    need_in_place(ctx, on=vm)
    size = npages * P
    g = vm.create_guest_memfd(size, MMAP | (INIT_SHARED if init_shared else 0))
    m = g.mmap(size)
    gpa = ctx.gpa_base(size)
    ctx.expect_ok(vm.set_user_memory_region2, SLOT, KVM_MEM_GUEST_MEMFD, gpa, size, userspace_addr=m.address,
                  guest_memfd=g, guest_memfd_offset=0)
    return InPlace(vm, g, m, vm.create_vcpu(0), gpa, npages)


# -------------------------------------------------------------------------------------------------------
# x86/guest_memfd_conversions_test.c (linux-7.md 1.4)
# -------------------------------------------------------------------------------------------------------


@case("7.1.4", profiles=IN_PLACE)
def conversions_init_private(ctx: Ctx) -> None:
    """MMAP only: host SIGBUS; the guest read-modify-writes; convert shared: the host sees the guest's data and
    writes; convert back private: the guest sees the host's data, the host SIGBUSes."""
    s = in_place_setup(ctx, 4, init_shared=False)
    s.host_sigbus(ctx, 0)
    s.guest(ctx, 0, expect=b"\0", write=b"A")
    s.convert(ctx, 0, 1, private=False)
    s.host(ctx, 0, expect=b"A", write=b"B")
    s.guest(ctx, 0, expect=b"B", write=b"C")
    s.convert(ctx, 0, 1, private=True)
    s.host_sigbus(ctx, 0)
    s.guest(ctx, 0, expect=b"C")
    s.close()


@case("7.1.4", profiles=IN_PLACE)
def conversions_init_shared(ctx: Ctx) -> None:
    """MMAP|INIT_SHARED, the inverse: host writes, guest reads; convert private: host SIGBUS, guest
    read-modify-writes; convert shared: host sees the guest's data."""
    s = in_place_setup(ctx, 4, init_shared=True)
    s.host(ctx, 0, expect=b"\0", write=b"A")
    s.guest(ctx, 0, expect=b"A", write=b"B")
    s.convert(ctx, 0, 1, private=True)
    s.host_sigbus(ctx, 0)
    s.guest(ctx, 0, expect=b"B", write=b"C")
    s.convert(ctx, 0, 1, private=False)
    s.host(ctx, 0, expect=b"C")
    s.close()


@case("7.1.4", profiles=IN_PLACE)
def conversions_indexing(ctx: Ctx) -> None:
    """4 pages converted one at a time: only the converted page changes; its neighbours stay host-usable."""
    s = in_place_setup(ctx, 4, init_shared=True)
    for i in range(4):
        s.host(ctx, i, write=bytes([0x10 + i]))
    for i in range(4):
        s.convert(ctx, i, 1, private=True)
        for j in range(4):
            if j == i:
                s.host_sigbus(ctx, j)
                s.guest(ctx, j, expect=bytes([0x10 + j]), write=bytes([0x20 + j]))
            else:
                s.host(ctx, j, expect=bytes([(0x20 if j < i else 0x10) + j]))
        s.convert(ctx, i, 1, private=False)
        s.host(ctx, i, expect=bytes([0x20 + i]))
    s.close()


@case("7.1.4", profiles=IN_PLACE)
def conversions_before_allocation_shared(ctx: Ctx) -> None:
    """A private file converted shared before any folio exists: the host faults in zeroes and writes them."""
    s = in_place_setup(ctx, 4, init_shared=False)
    s.convert(ctx, 1, 1, private=False)
    s.host(ctx, 1, expect=b"\0", write=b"H")
    s.guest(ctx, 1, expect=b"H")
    s.host_sigbus(ctx, 0)
    s.close()


@case("7.1.4", profiles=IN_PLACE)
def conversions_before_allocation_private(ctx: Ctx) -> None:
    """A shared file converted private before any folio exists: the host SIGBUSes, the guest sees zeroes."""
    s = in_place_setup(ctx, 4, init_shared=True)
    s.convert(ctx, 1, 1, private=True)
    s.host_sigbus(ctx, 1)
    s.guest(ctx, 1, expect=b"\0", write=b"G")
    s.convert(ctx, 1, 1, private=False)
    s.host(ctx, 1, expect=b"G")
    s.close()


@case("7.1.4", profiles=IN_PLACE)
def conversions_unallocated_folios(ctx: Ctx) -> None:
    """8 pages, two of them faulted by the host; the whole range converts both ways; data stays in place."""
    s = in_place_setup(ctx, 8, init_shared=True)
    s.host(ctx, 1, write=b"1")
    s.host(ctx, 2, write=b"2")
    s.convert(ctx, 0, 8, private=True)
    for i in range(8):
        s.host_sigbus(ctx, i)
        s.guest(ctx, i, expect={1: b"1", 2: b"2"}.get(i, b"\0"), write=bytes([0x30 + i]))
    s.convert(ctx, 0, 8, private=False)
    for i in range(8):
        s.host(ctx, i, expect=bytes([0x30 + i]))
    s.close()


@case("7.1.4", profiles=IN_PLACE)
def conversions_truncate(ctx: Ctx) -> None:
    """Punching a hole keeps the attribute: a punched shared page still faults for the host (zeroes); a
    punched private page stays private (host SIGBUS) and reads 0 in the guest."""
    s = in_place_setup(ctx, 4, init_shared=True)
    s.host(ctx, 0, write=b"A")
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, P)  # type: ignore[attr-defined]
    s.host(ctx, 0, expect=b"\0", write=b"A")
    s.convert(ctx, 0, 1, private=True)
    s.guest(ctx, 0, expect=b"A", write=b"B")
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, P)  # type: ignore[attr-defined]
    s.host_sigbus(ctx, 0)
    s.guest(ctx, 0, expect=b"\0")
    s.close()


@case("7.1.4", profiles=IN_PLACE)
def conversions_forked_accesses(ctx: Ctx) -> None:
    """A forked child that faulted a shared page loses it when the parent converts it private: SIGBUS on its
    next read and on its next write (realkernel-private.md 3/fork/*)."""
    s = in_place_setup(ctx, 16, init_shared=True)
    s.host(ctx, 9, write=b"F")
    child = ctx.system.fork()
    cm = child.mapping(s.mapping)
    ctx.expect_bytes(ctx.expect_ok(cm.read, 9 * P, 1), b"F", "child read of the shared page")
    s.convert(ctx, 9, 1, private=True)
    ctx.expect_sigbus(cm.read, 9 * P, 1)
    ctx.expect_sigbus(cm.write, 9 * P, b"W")
    s.convert(ctx, 9, 1, private=False)
    ctx.expect_bytes(ctx.expect_ok(cm.read, 9 * P, 1), b"F", "child read after converting back")
    child.exit()
    s.close()


@case("7.1.4", profiles=IN_PLACE)
def conversions_elevated_refcount(ctx: Ctx) -> None:
    """A long-term pin (GUP test) on page k: converting page k private is EAGAIN with error_offset = k pages;
    after the unpin the conversion succeeds and data written by the guest while private reaches the host."""
    s = in_place_setup(ctx, 4, init_shared=True)
    for k in range(4):
        s.host(ctx, k, write=bytes([0x40 + k]))
        pin = s.mapping.pin(k * P, P)  # type: ignore[attr-defined]
        expect_refused(ctx, "EAGAIN", s.gmem, k * P, P, PRIVATE, want_offset=k * P)
        pin.unpin()
        s.convert(ctx, k, 1, private=True)
        s.host_sigbus(ctx, k)
        s.guest(ctx, k, expect=bytes([0x40 + k]), write=bytes([0x50 + k]))
        s.convert(ctx, k, 1, private=False)
        s.host(ctx, k, expect=bytes([0x50 + k]))
    s.close()


@case("7.1.4", profiles=IN_PLACE)
def conversions_elevated_refcount_vmsplice(ctx: Ctx) -> None:
    """The same with a transient reference: page k spliced into a pipe (realkernel-private.md finding 3).
    EAGAIN while the pipe holds it; after the pipe is closed the conversion succeeds."""
    s = in_place_setup(ctx, 4, init_shared=True)
    for k in (0, 3):
        s.host(ctx, k, write=bytes([0x60 + k]))
        pipe = s.mapping.vmsplice(k * P, P)  # type: ignore[attr-defined]
        expect_refused(ctx, "EAGAIN", s.gmem, 0, 4 * P, PRIVATE, want_offset=k * P)
        pipe.unpin()
        s.convert(ctx, 0, 4, private=True)
        s.guest(ctx, k, expect=bytes([0x60 + k]))
        s.convert(ctx, 0, 4, private=False)
    s.close()


# -------------------------------------------------------------------------------------------------------
# kvm_gmem_set_attributes(): one case per step (linux-7.md 1.2). Steps 2-8 are all EINVAL, so the kernel
# shows only that the call was refused; the model's reason names the step (tests/model check the order).
# -------------------------------------------------------------------------------------------------------


def _file(ctx: Ctx, vm_type: VmType = VmType.SW_PROTECTED, npages: int = 16) -> tuple[object, object]:
    need_in_place(ctx)
    vm = ctx.vm(int(vm_type))
    if vm_type.has_private_mem:
        need_in_place(ctx, on=vm)
    flags = MMAP | INIT_SHARED
    return vm, vm.create_guest_memfd(npages * P, flags)


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step01_copy_from_user(ctx: Ctx) -> None:
    """Step 1: an unmapped argument pointer is EFAULT (before any EINVAL)."""
    _vm, g = _file(ctx)
    ctx.expect_errno("EFAULT", g.ioctl, KVM_SET_MEMORY_ATTRIBUTES2, 0x10)  # type: ignore[attr-defined]


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step02_flags(ctx: Ctx) -> None:
    """Step 2: any flag bit is EINVAL; error_offset is left as given."""
    _vm, g = _file(ctx)
    for flags in (1, 1 << 63):
        expect_refused(ctx, "EINVAL", g, 0, P, PRIVATE, flags=flags)
    expect_refused(ctx, "EINVAL", g, 0, 0, 1, flags=1, reserved=(1,))  # with later steps violated too


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step03_reserved(ctx: Ctx) -> None:
    """Step 3: a non-zero reserved word (first or last) is EINVAL."""
    _vm, g = _file(ctx)
    expect_refused(ctx, "EINVAL", g, 0, P, PRIVATE, reserved=(1,))
    expect_refused(ctx, "EINVAL", g, 0, P, PRIVATE, reserved=(0,) * 10 + (1,))
    expect_refused(ctx, "EINVAL", g, 1, 0, 1, reserved=(1,))


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step04_no_private_memory(ctx: Ctx) -> None:
    """Step 4: a default VM cannot convert, even a no-op to shared on an all-shared file (before step 9's
    no-op return; realkernel-private.md 3/attrs2_default_vm_zero)."""
    _vm, g = _file(ctx, VmType.DEFAULT)
    expect_refused(ctx, "EINVAL", g, 0, P, PRIVATE)
    expect_refused(ctx, "EINVAL", g, 0, P, 0)
    expect_refused(ctx, "EINVAL", g, 0x40000, P, PRIVATE)


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step05_attributes(ctx: Ctx) -> None:
    """Step 5: only PRIVATE (1<<3) is an attribute."""
    _vm, g = _file(ctx)
    for attributes in (1, PRIVATE | 1, 1 << 63):
        expect_refused(ctx, "EINVAL", g, 0, P, attributes)


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step06_size(ctx: Ctx) -> None:
    """Step 6: size 0, or offset + size wrapping past 2^64, is EINVAL."""
    _vm, g = _file(ctx)
    expect_refused(ctx, "EINVAL", g, 0, 0, PRIVATE)
    expect_refused(ctx, "EINVAL", g, (1 << 64) - P, 2 * P, PRIVATE)
    expect_refused(ctx, "EINVAL", g, 1, 0, PRIVATE)


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step07_alignment(ctx: Ctx) -> None:
    """Step 7: an offset or size that is not page aligned is EINVAL."""
    _vm, g = _file(ctx)
    expect_refused(ctx, "EINVAL", g, 0x64, P, PRIVATE)
    expect_refused(ctx, "EINVAL", g, 0, P + 1, PRIVATE)
    expect_refused(ctx, "EINVAL", g, (1 << 64) - 0x65, P, PRIVATE)


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step08_i_size(ctx: Ctx) -> None:
    """Step 8: offset at or past i_size, or an end past it, is EINVAL; a range ending at i_size is fine."""
    _vm, g = _file(ctx)
    size = 16 * P
    for offset, length in ((size, P), (size + P, P), (size - P, 2 * P), (0, 1 << 62)):
        expect_refused(ctx, "EINVAL", g, offset, length, PRIVATE)
    expect_converted(ctx, g, 0, size, private=False)
    expect_converted(ctx, g, size - P, P, private=True)
    expect_converted(ctx, g, size - P, P, private=False)


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step09_noop(ctx: Ctx) -> None:
    """Step 9: a range that already has the value returns 0 with no unmap: the host PTE stays
    (realkernel-private.md 3/conv/noop_shared_pagemap)."""
    _vm, g = _file(ctx)
    m = g.mmap(16 * P)  # type: ignore[attr-defined]
    m.write(0, b"\xa0")
    ctx.check(m.pte_present(0), "the host write left no PTE")
    expect_converted(ctx, g, 0, P, private=False)
    ctx.check(m.pte_present(0), "a no-op conversion to shared unmapped the page")
    expect_converted(ctx, g, 0, P, private=True)
    ctx.check(not m.pte_present(0), "converting to private left the host PTE")
    expect_converted(ctx, g, 0, P, private=True)
    m.munmap()


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step09_unmap_before_refcount_check(ctx: Ctx) -> None:
    """Step 9: to private, host mappings are unmapped *before* the folios are checked: after EAGAIN the PTEs
    of the whole range are gone, the range is still shared and re-faults with its data."""
    _vm, g = _file(ctx)
    m = g.mmap(16 * P)  # type: ignore[attr-defined]
    m.write(0, b"\x01")
    m.write(P, b"\x02")
    pipe = m.vmsplice(P, P)
    expect_refused(ctx, "EAGAIN", g, 0, 2 * P, PRIVATE, want_offset=P)
    ctx.check(not m.pte_present(0) and not m.pte_present(P), "PTEs survived the refused conversion")
    ctx.expect_bytes(m.read(0, 1) + m.read(P, 1), b"\x01\x02", "host re-read after EAGAIN")
    pipe.unpin()
    m.munmap()


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step09_eagain_offset(ctx: Ctx) -> None:
    """Step 9: EAGAIN reports the first offending folio of the range, never below the offset asked for."""
    _vm, g = _file(ctx)
    m = g.mmap(16 * P)  # type: ignore[attr-defined]
    m.fill(0, 16 * P, 0x5A)
    pipes = [m.vmsplice(5 * P, P), m.vmsplice(9 * P, 2 * P)]
    expect_refused(ctx, "EAGAIN", g, 2 * P, 10 * P, PRIVATE, want_offset=5 * P)
    expect_refused(ctx, "EAGAIN", g, 6 * P, 10 * P, PRIVATE, want_offset=9 * P)
    expect_refused(ctx, "EAGAIN", g, 10 * P, 2 * P, PRIVATE, want_offset=10 * P)
    for pipe in pipes:
        pipe.unpin()
    expect_converted(ctx, g, 2 * P, 10 * P, private=True)
    m.munmap()


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step09_enomem(ctx: Ctx) -> None:
    """Step 9: a failed maple-tree preallocation is ENOMEM with error_offset = offset, and nothing changes
    (model fault injection; the kernel backend cannot inject it and skips)."""
    _vm, g = _file(ctx)
    m = g.mmap(16 * P)  # type: ignore[attr-defined]
    m.write(3 * P, b"\x33")
    ctx.system.inject_fault("mtree_preallocate")
    expect_refused(ctx, "ENOMEM", g, 2 * P, 4 * P, PRIVATE, want_offset=2 * P)
    ctx.check(m.pte_present(3 * P), "ENOMEM came after the host mappings were touched")
    ctx.expect_bytes(m.read(3 * P, 1), b"\x33", "host read after ENOMEM")
    expect_converted(ctx, g, 2 * P, 4 * P, private=True)
    m.munmap()


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step09_guest_mappings(ctx: Ctx) -> None:
    """Step 9: the guest's mappings follow each conversion (invalidated with the SHARED or PRIVATE filter):
    the page it mapped shared is read private in place, and back."""
    s = in_place_setup(ctx, 4, init_shared=True)
    s.host(ctx, 2, write=b"\x70")
    s.guest(ctx, 2, expect=b"\x70")
    s.convert(ctx, 2, 1, private=True)
    s.guest(ctx, 2, expect=b"\x70", write=b"\x42")
    s.convert(ctx, 2, 1, private=False)
    s.guest(ctx, 2, expect=b"\x42")
    s.host(ctx, 2, expect=b"\x42")
    s.close()


@case("7.1.2", profiles=IN_PLACE)
def attributes2_step10_error_offset_reaches_userspace(ctx: Ctx) -> None:
    """Step 10: the struct is copied back on error, so EAGAIN's error_offset reaches userspace; an EINVAL
    leaves the caller's value (copied back unchanged, or not copied: the two cannot be told apart)."""
    _vm, g = _file(ctx)
    m = g.mmap(16 * P)  # type: ignore[attr-defined]
    m.write(7 * P, b"\x07")
    pipe = m.vmsplice(7 * P, P)
    expect_refused(ctx, "EAGAIN", g, 4 * P, 8 * P, PRIVATE, want_offset=7 * P)
    expect_refused(ctx, "EINVAL", g, 4 * P, 8 * P, PRIVATE, flags=1, error_offset=0x1234000)
    pipe.unpin()
    m.munmap()


# -------------------------------------------------------------------------------------------------------
# The module parameter (linux-7.md 1.1): one case reads which value is in force and checks its effects.
# -------------------------------------------------------------------------------------------------------


@case("7.1.1", profiles=IN_PLACE)
def in_place_parameter(ctx: Ctx) -> None:
    """On: ATTRIBUTES2 works, KVM_CAP_MEMORY_ATTRIBUTES is 0 and the per-VM ioctl is gone, INIT_SHARED is
    valid for SW_PROTECTED. Off: ATTRIBUTES2 is ENOTTY (before reading its argument), the 7.3 rules stand."""
    if VmType.SW_PROTECTED not in ctx.system.vm_types():
        ctx.skip("needs KVM_X86_SW_PROTECTED_VM (KVM_CAP_VM_TYPES "
                 f"{ctx.system.check_extension(Cap.VM_TYPES):#x})")
    vm = ctx.vm(int(VmType.SW_PROTECTED))
    cap = cap_guest_memfd_memory_attributes()
    on = bool(ctx.system.check_extension(cap) & PRIVATE)
    ctx.check(bool(vm.check_extension(cap) & PRIVATE) == on, "the VM and /dev/kvm disagree on the capability")
    flags = vm.check_extension(Cap.GUEST_MEMFD_FLAGS)
    ctx.check(bool(flags & INIT_SHARED) == on, f"GUEST_MEMFD_FLAGS {flags:#x} on a SW_PROTECTED VM")
    if on:
        ctx.check(ctx.system.check_extension(Cap.MEMORY_ATTRIBUTES) == 0, "per-VM attributes still offered")
        ctx.expect_errno("ENOTTY", vm.set_memory_attributes, 0, P, PRIVATE)
        g = vm.create_guest_memfd(4 * P, MMAP | INIT_SHARED)
        expect_converted(ctx, g, 0, P, private=True)
    else:
        ctx.expect_errno("EINVAL", vm.create_guest_memfd, 4 * P, MMAP | INIT_SHARED)
        g = vm.create_guest_memfd(4 * P, MMAP)
        expect_refused(ctx, "ENOTTY", g, 0, P, PRIVATE)
        ctx.expect_errno("ENOTTY", g.ioctl, KVM_SET_MEMORY_ATTRIBUTES2, 0x10)
    g.close()


@case("7.1.1", profiles=IN_PLACE)
def attributes2_wrong_fd_or_number(ctx: Ctx) -> None:
    """KVM_SET_MEMORY_ATTRIBUTES2 exists only on the gmem fd: ENOTTY on the VM fd and on a memfd, EINVAL on
    /dev/kvm; the 32-byte VM number on the gmem fd is ENOTTY (realkernel-private.md 2/swp/attrs2_on_vmfd,
    3/attrs2_*)."""
    vm, g = _file(ctx)
    arg = bytes(128)
    ctx.expect_errno("ENOTTY", vm.ioctl, KVM_SET_MEMORY_ATTRIBUTES2, arg)  # type: ignore[attr-defined]
    ctx.expect_errno("EINVAL", ctx.system.ioctl, KVM_SET_MEMORY_ATTRIBUTES2, arg)
    memfd = ctx.system.memfd_create(4 * P)
    ctx.expect_errno("ENOTTY", memfd.ioctl, KVM_SET_MEMORY_ATTRIBUTES2, arg)
    ctx.expect_errno("ENOTTY", g.ioctl, KVM_SET_MEMORY_ATTRIBUTES, bytes(32))  # type: ignore[attr-defined]
    memfd.close()


# -------------------------------------------------------------------------------------------------------
# In-place modes of private_mem_conversions_test.c and private_mem_kvm_exits_test.c (linux-7.md 1.4)
# -------------------------------------------------------------------------------------------------------

TEST_RANGES = ((0, P), (0, M2), (P, P), (P, M2), (M2, P))  # (offset, size) the guest converts


@case("7.1.4", profiles=IN_PLACE)
def private_mem_conversions_in_place(ctx: Ctx) -> None:
    """The guest's MAP_GPA_RANGE conversions done with ATTRIBUTES2: shared pattern seen by both; private: the
    host SIGBUSes, the guest's pattern stays in place; odd pages back to shared take the host's data; all
    shared: the host's 4th pattern reaches the guest."""
    npages = (2 * M2) // P
    s = in_place_setup(ctx, npages, init_shared=True)
    for offset, size in TEST_RANGES:
        first, count = offset // P, size // P
        s.host(ctx, first, write=b"\x11")
        s.host(ctx, first + count - 1, write=b"\x11")
        s.guest(ctx, first, expect=b"\x11")
        s.convert(ctx, first, count, private=True)
        s.host_sigbus(ctx, first)
        s.host_sigbus(ctx, first + count - 1)
        s.guest(ctx, first, expect=b"\x11", write=b"\x22")
        s.guest(ctx, first + count - 1, write=b"\x22")
        for page in range(first + 1, first + count, 2):
            s.convert(ctx, page, 1, private=False)
            s.host(ctx, page, expect=b"\x22" if page == first + count - 1 else b"\0", write=b"\x33")
            s.guest(ctx, page, expect=b"\x33")
        s.guest(ctx, first, expect=b"\x22")
        s.convert(ctx, first, count, private=False)
        s.host(ctx, first, expect=b"\x22", write=b"\x44")
        s.guest(ctx, first, expect=b"\x44")
        ctx.expect_ok(s.gmem.fallocate, PUNCH, offset, size)  # type: ignore[attr-defined]
    # punch test: with everything private, a punched range reads zeroes in the guest
    s.convert(ctx, 0, npages, private=True)
    s.guest(ctx, 5, write=b"\x55")
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 5 * P, P)  # type: ignore[attr-defined]
    s.guest(ctx, 5, expect=b"\0")
    # guest_memfd pins the VM: after the VM and vCPU are gone, punch and allocate still work
    s.cpu.close()  # type: ignore[attr-defined]
    s.vm.close()  # type: ignore[attr-defined]
    ctx.expect_ok(s.gmem.fallocate, PUNCH, 0, npages * P)  # type: ignore[attr-defined]
    ctx.expect_ok(s.gmem.fallocate, KEEP, 0, npages * P)  # type: ignore[attr-defined]
    s.mapping.munmap()  # type: ignore[attr-defined]
    s.gmem.close()  # type: ignore[attr-defined]


@case("7.1.4", profiles=IN_PLACE)
def private_mem_kvm_exits_in_place(ctx: Ctx) -> None:
    """In-place mode: private state lives in the gmem, so a private gfn whose gmem slot is deleted is no
    longer private (an emulated MMIO exit, not a memory fault; cf. realkernel-private.md 4e on B), and a
    plain slot's gfn cannot be made private at all (no per-VM attributes: ENOTTY, row 4b on B)."""
    s = in_place_setup(ctx, 4, init_shared=False)
    s.guest(ctx, 0, expect=b"\0")
    ctx.expect_ok(s.vm.set_user_memory_region2, SLOT, 0, s.gpa, 0)  # type: ignore[attr-defined]
    ex = ctx.expect_exit(s.cpu.read, s.gpa, 1)  # type: ignore[attr-defined]
    ctx.check(ex.exit_reason == KVM_EXIT_MMIO, f"expected an MMIO exit, got {ex}")
    ctx.expect_errno("ENOTTY", s.vm.set_memory_attributes, s.gpa, P, PRIVATE)  # type: ignore[attr-defined]
    s.close()


# -------------------------------------------------------------------------------------------------------
# Before the series, and forked VMM children on every merged kernel (issue 14 item 4)
# -------------------------------------------------------------------------------------------------------


@case("7.1.1", profiles=("linux-6.18", "linux-7.3"))
def attributes2_absent(ctx: Ctx) -> None:
    """Without the series a guest_memfd has no ioctl: ATTRIBUTES2 is ENOTTY with the struct untouched, even with
    a bad pointer (realkernel-private.md column A, 3/attrs2_*); the VM fd and /dev/kvm answer as for any
    unknown number."""
    vm = ctx.vm(int(VmType.DEFAULT))
    g = vm.create_guest_memfd(4 * P, MMAP | INIT_SHARED)
    expect_refused(ctx, "ENOTTY", g, 0, P, PRIVATE)
    ctx.expect_errno("ENOTTY", g.ioctl, KVM_SET_MEMORY_ATTRIBUTES2, 0x10)
    ctx.expect_errno("ENOTTY", vm.ioctl, KVM_SET_MEMORY_ATTRIBUTES2, bytes(128))
    ctx.expect_errno("EINVAL", ctx.system.ioctl, KVM_SET_MEMORY_ATTRIBUTES2, bytes(128))
    g.close()


@case("7.1.1", profiles=("linux-6.18", "linux-7.3", "linux-7.4"))
def forked_vmm_child(ctx: Ctx) -> None:
    """A forked child shares the gmem mapping with its parent (same pages both ways, punch seen by both), keeps
    the file alive through its inherited fd after the parent lets go, and gets EIO for every VM ioctl
    (kvm->mm != current->mm; realkernel.md #80-#81)."""
    vm = ctx.vm(int(VmType.DEFAULT))
    g = vm.create_guest_memfd(4 * P, MMAP | INIT_SHARED)
    m = g.mmap(4 * P)
    m.write(0, b"parent")
    child = ctx.system.fork()
    cm = child.mapping(m)
    ctx.expect_bytes(ctx.expect_ok(cm.read, 0, 6), b"parent", "child read of the parent's data")
    ctx.expect_ok(cm.write, P, b"child")
    ctx.expect_bytes(m.read(P, 5), b"child", "parent read of the child's data")
    ctx.expect_ok(g.fallocate, PUNCH, 0, P)
    ctx.expect_bytes(ctx.expect_ok(cm.read, 0, 6), bytes(6), "child read after the parent's punch")
    ctx.expect_errno("EIO", child.check_extension, vm, Cap.GUEST_MEMFD)
    ctx.expect_errno("EIO", child.create_guest_memfd, vm, P, 0)
    m.munmap()
    g.close()
    ctx.expect_bytes(ctx.expect_ok(cm.read, P, 5), b"child", "the child's mapping outlives the parent's fd")
    child.exit()


@case("7.1.1", profiles=("linux-6.18", "linux-7.3", "linux-7.4"))
def conversion_by_the_kernels_mechanism(ctx: Ctx) -> None:
    """One guest page made private and back with what the VM offers (conformance.convert: ATTRIBUTES2 on the gmem
    with in-place conversion, the per-VM ioctl otherwise): the contents stay in the one gmem page of an MMAP slot
    (realkernel-private.md 4c, finding 12); the host may touch it only while it is shared, and, per-VM, only with
    INIT_SHARED, which a SW_PROTECTED VM gets only with in-place conversion."""
    if VmType.SW_PROTECTED not in ctx.system.vm_types():
        ctx.skip(f"needs KVM_X86_SW_PROTECTED_VM (KVM_CAP_VM_TYPES {ctx.system.check_extension(Cap.VM_TYPES):#x})")
    vm = ctx.vm(int(VmType.SW_PROTECTED))
    how = mechanism(vm)
    if how is None:
        ctx.skip(f"no way to make memory private: KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES "
                 f"({cap_guest_memfd_memory_attributes()}) = "
                 f"{vm.check_extension(cap_guest_memfd_memory_attributes()):#x}, KVM_CAP_MEMORY_ATTRIBUTES = "
                 f"{vm.check_extension(Cap.MEMORY_ATTRIBUTES):#x}")
    ctx.check((how == IN_PLACE_MECHANISM) == ctx.in_place(vm), f"mechanism {how} on {ctx.profile}")
    flags = MMAP | (vm.check_extension(Cap.GUEST_MEMFD_FLAGS) & INIT_SHARED)
    g = vm.create_guest_memfd(4 * P, flags)
    m = g.mmap(4 * P)
    gpa = ctx.gpa_base(4 * P)
    ctx.expect_ok(vm.set_user_memory_region2, SLOT, KVM_MEM_GUEST_MEMFD, gpa, 4 * P, userspace_addr=m.address,
                  guest_memfd=g, guest_memfd_offset=0)
    cpu = vm.create_vcpu(0)
    ctx.expect_ok(cpu.write, gpa, b"\x21")
    ctx.expect_ok(convert, vm, g, gpa, 0, P, True)
    ctx.expect_sigbus(m.read, 0, 1)
    ctx.expect_bytes(ctx.expect_ok(cpu.read, gpa, 1), b"\x21", "guest read of its data, now private")
    ctx.expect_ok(cpu.write, gpa, b"\x42")
    ctx.expect_ok(convert, vm, g, gpa, 0, P, False)
    ctx.expect_bytes(ctx.expect_ok(cpu.read, gpa, 1), b"\x42", "guest read after converting back")
    if flags & INIT_SHARED:
        ctx.expect_bytes(ctx.expect_ok(m.read, 0, 1), b"\x42", "host read of the shared page")
    else:
        ctx.expect_sigbus(m.read, 0, 1)  # per-VM attributes never make a non-INIT_SHARED file host-faultable
    cpu.close()
    m.munmap()
    g.close()
