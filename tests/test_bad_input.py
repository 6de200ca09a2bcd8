"""Bad input gets the kernel's errno and a message naming the argument, and changes nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gmemlab.backend import MAPPING_GUARD
from gmemlab.errors import HostSigsegv, KvmError, OutsideReservation, UnrepresentableArgument
from gmemlab.model import ModelBackend
from gmemlab.uapi import KVM_MEM_GUEST_MEMFD, PAGE_SIZE

P = PAGE_SIZE


def snapshot(system: ModelBackend) -> tuple:
    """Everything observable about the model's guest_memfds and VMs, for before/after comparison."""
    state = []
    for inode in system.inodes():
        state.append((inode.ino, inode.size, tuple(inode.pagecache.state.runs()),
                      tuple((s, e, v) for s, e, v in inode.shareability.runs(0, inode.npages)),
                      tuple(sorted(inode.pagecache.data)), tuple(inode.pins.runs())))
    for vm in system.vms:
        state.append((tuple(sorted((k, s.base_gfn, s.npages) for k, s in vm.memslots.items())),
                      tuple(vm.stage2.mapped()), tuple(vm.attributes.runs(0, 1 << 40))))
    return tuple(state)


@pytest.fixture
def world(profile: str):  # type: ignore[no-untyped-def]
    system = ModelBackend(profile)
    vm = system.create_vm(1)
    g = vm.create_guest_memfd(8 * P, 1)
    m = g.mmap(8 * P)
    if profile == "rfc-v2":
        m.fill(0, P, 0x11)  # a SW_PROTECTED VM cannot have INIT_SHARED in 6.18: only RFC v2 can fault here
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, 1 << 32, 4 * P, userspace_addr=0, guest_memfd=g,
                               guest_memfd_offset=0)
    return system, vm, g, m


BAD_CALLS = [
    ("create negative size", lambda vm, g, m: vm.create_guest_memfd(-P, 0), 22, "size"),
    ("create unaligned size", lambda vm, g, m: vm.create_guest_memfd(P + 1, 0), 22, "page aligned"),
    ("create huge unaligned", lambda vm, g, m: vm.create_guest_memfd((1 << 64) - 1, 0), 22, "size"),
    ("create bad flags", lambda vm, g, m: vm.create_guest_memfd(P, 1 << 40), 22, "valid mask"),
    ("fallocate negative offset", lambda vm, g, m: g.fallocate(1, -P, P), 22, "offset"),
    ("fallocate unaligned", lambda vm, g, m: g.fallocate(1, 1, P), 22, "page aligned"),
    ("fallocate past EOF", lambda vm, g, m: g.fallocate(1, 0, 16 * P), 22, "past EOF"),
    ("fallocate huge", lambda vm, g, m: g.fallocate(3, (1 << 63) - P, 2 * P), 27, "overflows"),
    ("punch unaligned len", lambda vm, g, m: g.fallocate(3, 0, P - 1), 22, "page aligned"),
    ("mmap unaligned offset", lambda vm, g, m: g.mmap(P, 100), 22, "offset"),
    ("mmap zero length", lambda vm, g, m: g.mmap(0), 22, "length"),
    ("bind unaligned gpa", lambda vm, g, m: vm.set_user_memory_region2(
        2, KVM_MEM_GUEST_MEMFD, (1 << 33) + 1, P, userspace_addr=0, guest_memfd=g, guest_memfd_offset=0),
     22, "guest_phys_addr"),
    ("bind past EOF", lambda vm, g, m: vm.set_user_memory_region2(
        2, KVM_MEM_GUEST_MEMFD, 1 << 33, 16 * P, userspace_addr=0, guest_memfd=g, guest_memfd_offset=0),
     22, "i_size"),
    ("bind negative slot size", lambda vm, g, m: vm.set_user_memory_region2(
        2, KVM_MEM_GUEST_MEMFD, 1 << 33, -P, userspace_addr=0, guest_memfd=g, guest_memfd_offset=0),
     22, "memory_size"),
    ("attributes unaligned", lambda vm, g, m: vm.set_memory_attributes(1, P, 8), 22, "page aligned"),
    ("attributes unknown bit", lambda vm, g, m: vm.set_memory_attributes(0, P, 1), 22, "attributes"),
    ("attributes flags", lambda vm, g, m: vm.set_memory_attributes(0, P, 8, 1), 22, "flags"),
]


@pytest.mark.parametrize("what,call,err,needle", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_input_errno_and_unchanged_state(world, what, call, err, needle) -> None:  # type: ignore[no-untyped-def]
    system, vm, g, m = world
    before = snapshot(system)
    with pytest.raises(KvmError) as info:
        call(vm, g, m)
    assert info.value.errno == err, str(info.value)
    assert needle in str(info.value)
    assert snapshot(system) == before
    system.check_invariants()


# Values no C argument can hold: refused before the kernel (by the model and the kernel client alike).
UNREPRESENTABLE = [
    ("create str size", lambda vm, g, m: vm.create_guest_memfd("4096", 0), "size must be an integer"),
    ("create float size", lambda vm, g, m: vm.create_guest_memfd(4096.0, 0), "size must be an integer"),
    ("create size 2**64", lambda vm, g, m: vm.create_guest_memfd(1 << 64, 0), "size = 0x10000000000000000"),
    ("fallocate None len", lambda vm, g, m: g.fallocate(1, 0, None), "len must be an integer"),
    ("guest read bad gpa type", lambda vm, g, m: vm.create_vcpu().read("x", 1), "gpa must be an integer"),
    ("host write non-bytes", lambda vm, g, m: m.write(0, "text"), "data must be bytes"),
    ("host fill bad byte", lambda vm, g, m: m.fill(0, 1, 256), "does not fit unsigned char"),
    ("bind wrong type fd", lambda vm, g, m: vm.set_user_memory_region2(
        2, KVM_MEM_GUEST_MEMFD, 1 << 33, P, userspace_addr=0, guest_memfd="gmem", guest_memfd_offset=0),
     "guest_memfd must be an integer"),
    ("slot id 2**40", lambda vm, g, m: vm.set_user_memory_region2(1 << 40, 0, 0, 0), "does not fit __u32"),
    ("vcpu id 2**64", lambda vm, g, m: vm.create_vcpu(1 << 64), "does not fit unsigned long"),
]


@pytest.mark.parametrize("what,call,needle", UNREPRESENTABLE, ids=[b[0] for b in UNREPRESENTABLE])
def test_unrepresentable_values_refused_and_unchanged_state(world, what, call, needle) -> None:  # type: ignore[no-untyped-def]
    system, vm, g, m = world
    before = snapshot(system)
    with pytest.raises(UnrepresentableArgument) as info:
        call(vm, g, m)
    assert needle in str(info.value) and "not passed to the kernel" in str(info.value)
    assert snapshot(system) == before
    system.check_invariants()


@pytest.mark.parametrize("bad,exc", [((-1, 1), HostSigsegv), ((-MAPPING_GUARD, 1), HostSigsegv),
                                     ((8 * P + MAPPING_GUARD - 1, 1), HostSigsegv),
                                     ((8 * P + MAPPING_GUARD, 1), OutsideReservation),
                                     ((-MAPPING_GUARD - 1, 1), OutsideReservation),
                                     ((0, -5), OutsideReservation), ((1 << 70, 1), OutsideReservation)])
def test_host_access_outside_mapping(world, bad, exc) -> None:  # type: ignore[no-untyped-def]
    """The guards around a mapping answer SIGSEGV (PROT_NONE); past them nothing is touched (both backends)."""
    system, _, _, m = world
    before = snapshot(system)
    with pytest.raises(exc):
        m.read(*bad)
    assert snapshot(system) == before


def test_rfc_convert_bad_input_changes_nothing() -> None:
    system = ModelBackend("rfc-v2")
    vm = system.create_vm(1)
    g = vm.create_guest_memfd(8 * P, 1)
    before = snapshot(system)
    for args, needle in [((0, P, False, 4), "error_offset"), ((P, 8 * P, False), "exceeds i_size"),
                         ((1, P, True), "page aligned"),
                         ((-P, 2 * P, False), "exceeds")]:
        with pytest.raises(KvmError, match=needle) as info:
            g.convert(*args)
        assert info.value.errno == 22
        assert snapshot(system) == before


def test_cli_bad_arguments_print_one_line_no_traceback() -> None:
    for argv in (["conformance", "--profile", "linux-9"], ["conformance", "--backend", "qemu"]):
        proc = subprocess.run([sys.executable, "-m", "gmemlab", *argv], capture_output=True, text=True)
        assert proc.returncode == 2, proc
        assert "Traceback" not in proc.stderr + proc.stdout
        assert "linux-9" in proc.stderr or "qemu" in proc.stderr
