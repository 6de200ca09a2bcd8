"""Guest reads and writes through the native CPL3 guest: realkernel.md rows #268-#303, exits, watchdog."""

from __future__ import annotations

import errno
import time

import pytest

from gmemlab import uapi
from gmemlab.errors import HostSigbus, UnsupportedByBackend, VcpuExit
from gmemlab.kernel import guest

P = uapi.PAGE_SIZE
MIB = 1 << 20
GPA = 2 * MIB
GMEM = uapi.KVM_MEM_GUEST_MEMFD
PUNCH = uapi.FALLOC_FL_PUNCH_HOLE | uapi.FALLOC_FL_KEEP_SIZE


def _bound(vm, pages=64, flags=3, gpa=GPA, uaddr_is_mmap=True, slot=1):
    g = vm.create_guest_memfd(pages * P, flags)
    m = g.mmap(pages * P) if flags & 1 else None
    uaddr = m.address if (m is not None and uaddr_is_mmap) else 0
    vm.set_user_memory_region2(slot, GMEM, gpa, pages * P, uaddr, g, 0)
    return g, m


@pytest.mark.parametrize("uaddr_is_mmap", [False, True])
def test_guest_read_write_rows_269_to_271(vm, uaddr_is_mmap):
    _g, m = _bound(vm, uaddr_is_mmap=uaddr_is_mmap)
    v = vm.create_vcpu()
    m.write(0x10, (0x1122334455667788).to_bytes(8, "little"))
    assert v.read(GPA + 0x10, 8) == (0x1122334455667788).to_bytes(8, "little")
    v.write(GPA + 0x1FF8, (0xFEEDFACECAFEF00D).to_bytes(8, "little"))
    assert m.read(0x1FF8, 8) == (0xFEEDFACECAFEF00D).to_bytes(8, "little")


def test_selftest_guest_memfd_guest_row_272(vm):
    g = vm.create_guest_memfd(P, 3)
    vm.set_user_memory_region2(1, GMEM, 4 << 30, P, 0, g, 0)
    m = g.mmap(P)
    m.fill(0, P, 0xAA)
    m.munmap()
    v = vm.create_vcpu()
    assert v.read(4 << 30, P) == b"\xaa" * P
    v.write(4 << 30, b"\xff" * P)
    assert g.mmap(P).read(0, P) == b"\xff" * P


@pytest.mark.parametrize("length", [1, 7, P + 3, guest.BOUNCE_SIZE, guest.BOUNCE_SIZE * 2 + 5])
def test_arbitrary_lengths(vm, length):
    _g, m = _bound(vm, pages=256)
    v = vm.create_vcpu()
    data = bytes((i * 7 + 3) & 0xFF for i in range(length))
    v.write(GPA + 5, data)
    assert m.read(5, length) == data
    assert v.read(GPA + 5, length) == data


def test_punch_then_guest_reads_zero_rows_274_275(vm):
    g, m = _bound(vm)
    v = vm.create_vcpu()
    v.write(GPA + 3 * P, (0x5555).to_bytes(8, "little"))
    g.fallocate(PUNCH, 3 * P, P)
    assert v.read(GPA + 3 * P, 8) == bytes(8)
    assert m.read(3 * P, 8) == bytes(8)
    m.write(3 * P, (0xABCDEF).to_bytes(8, "little"))
    assert v.read(GPA + 3 * P, 8) == (0xABCDEF).to_bytes(8, "little")
    m.munmap()  # 276: guest still reads through the fd-held file
    assert v.read(GPA + 3 * P, 8) == (0xABCDEF).to_bytes(8, "little")


def test_mmio_exit_past_slot_row_279(vm):
    _bound(vm, pages=64)
    v = vm.create_vcpu()
    end = GPA + 64 * P
    with pytest.raises(VcpuExit) as ei:
        v.read(end, 8)
    e = ei.value
    assert (e.exit_reason, e.errno, e.gpa, e.is_write) == (uapi.KVM_EXIT_MMIO, 0, end, False)
    with pytest.raises(VcpuExit) as ei:
        v.write(end - 4, b"12345678")  # crosses the slot end: the first 4 bytes land
    e = ei.value
    assert (e.exit_reason, e.gpa, e.is_write) == (uapi.KVM_EXIT_MMIO, end, True)
    assert v.read(end - 4, 4) == b"1234"  # the vCPU is usable again after the exit


def test_mmap_without_init_shared_row_280(vm):
    _g, m = _bound(vm, flags=1, uaddr_is_mmap=False)
    v = vm.create_vcpu()
    assert v.read(GPA + 0x20, 8) == bytes(8)
    v.write(GPA + 0x20, b"\x77")
    with pytest.raises(HostSigbus):
        m.read(0x20, 1)


@pytest.mark.parametrize("flags", [0, 2])
def test_no_mmap_flag_uaddr0_efault_unknown_rows_281_283(vm, flags):
    _bound(vm, flags=flags)
    v = vm.create_vcpu()
    for op in (lambda: v.read(GPA, 8), lambda: v.write(GPA, b"x")):
        with pytest.raises(VcpuExit) as ei:
            op()
        assert (ei.value.exit_reason, ei.value.errno) == (uapi.KVM_EXIT_UNKNOWN, errno.EFAULT)


@pytest.mark.parametrize("flags", [0, 2])
def test_no_mmap_flag_uses_uaddr_rows_282_284(kb, vm, flags):
    g = vm.create_guest_memfd(64 * P, flags)
    anon = kb.mmap_anonymous(64 * P)
    anon.write(0, (0xA11A).to_bytes(8, "little"))
    vm.set_user_memory_region2(1, GMEM, GPA, 64 * P, anon.address, g, 0)
    v = vm.create_vcpu()
    assert v.read(GPA, 8) == (0xA11A).to_bytes(8, "little")
    v.write(GPA + 0x20, b"\x77")
    assert anon.read(0x20, 1) == b"\x77"


def test_two_slots_delete_rebind_rows_286_to_288(vm):
    g = vm.create_guest_memfd(32 * P, 3)
    m = g.mmap(32 * P)
    vm.set_user_memory_region2(1, GMEM, GPA, 16 * P, m.address, g, 0)
    vm.set_user_memory_region2(2, GMEM, 4 * MIB, 16 * P, m.address + 16 * P, g, 16 * P)
    v = vm.create_vcpu()
    v.write(GPA + 8, b"\xa1")
    v.write(4 * MIB + 8, b"\xb2")
    assert m.read(8, 1) == b"\xa1" and m.read(16 * P + 8, 1) == b"\xb2"
    vm.set_user_memory_region2(2, GMEM, 4 * MIB, 0, 0, None, 0)
    with pytest.raises(VcpuExit) as ei:
        v.read(4 * MIB + 8, 1)
    assert (ei.value.exit_reason, ei.value.gpa) == (uapi.KVM_EXIT_MMIO, 4 * MIB + 8)
    vm.set_user_memory_region2(3, GMEM, 4 * MIB, 16 * P, 0, g, 16 * P)
    assert v.read(4 * MIB + 8, 1) == b"\xb2"


def test_memory_fault_after_close_rows_289_to_294(vm):
    g, m = _bound(vm, pages=64, uaddr_is_mmap=False)
    v = vm.create_vcpu()
    m.write(0, (0x1234).to_bytes(8, "little"))
    assert v.read(GPA, 8) == (0x1234).to_bytes(8, "little")  # 289
    g.close()
    assert v.read(GPA, 8) == (0x1234).to_bytes(8, "little")  # 290: the VMA holds the file
    m.munmap()  # 291: last reference gone -> kvm_gmem_release
    with pytest.raises(VcpuExit) as ei:
        v.read(GPA, 8)
    assert ei.value == VcpuExit(uapi.KVM_EXIT_MEMORY_FAULT, errno.EFAULT, GPA, P, 0)
    with pytest.raises(VcpuExit) as ei:  # 292: never-faulted page
        v.read(GPA + P, 8)
    assert ei.value == VcpuExit(uapi.KVM_EXIT_MEMORY_FAULT, errno.EFAULT, GPA + P, P, 0)
    with pytest.raises(VcpuExit) as ei:  # a write mid-page reports the page-aligned gpa
        v.write(GPA + 2 * P + 100, b"x")
    assert (ei.value.exit_reason, ei.value.gpa, ei.value.size) == (uapi.KVM_EXIT_MEMORY_FAULT, GPA + 2 * P, P)
    vm.set_user_memory_region2(1, GMEM, GPA, 0, 0, None, 0)  # 293
    _bound(vm, pages=64, slot=1)  # 294
    assert v.read(GPA, 8) == bytes(8)


def test_plain_slot_backed_by_gmem_mmap_rows_302_303(vm):
    g3 = vm.create_guest_memfd(16 * P, 3)
    m3 = g3.mmap(16 * P)
    m3.write(0, (0x5151).to_bytes(8, "little"))
    vm.set_user_memory_region2(1, 0, GPA, 16 * P, m3.address)
    g1 = vm.create_guest_memfd(16 * P, 1)
    m1 = g1.mmap(16 * P)
    vm.set_user_memory_region2(2, 0, 4 * MIB, 16 * P, m1.address)
    v = vm.create_vcpu()
    assert v.read(GPA, 8) == (0x5151).to_bytes(8, "little")
    with pytest.raises(VcpuExit) as ei:
        v.read(4 * MIB, 8)
    assert (ei.value.exit_reason, ei.value.errno) == (uapi.KVM_EXIT_UNKNOWN, errno.EFAULT)


def test_watchdog_bounds_a_wedged_vcpu(vm):
    _bound(vm)
    v = vm.create_vcpu()
    t = time.monotonic()
    with pytest.raises(VcpuExit) as ei:
        v.spin(0.2)
    assert 0.15 < time.monotonic() - t < 2
    assert (ei.value.exit_reason, ei.value.errno, ei.value.detail) == (uapi.KVM_EXIT_INTR, errno.EINTR, "timeout")
    v.write(GPA, b"ok")
    assert v.read(GPA, 2) == b"ok"


def test_private_and_window_unsupported(kb, vm):
    _bound(vm)
    v = vm.create_vcpu()
    with pytest.raises(UnsupportedByBackend, match="KVM_CAP_MEMORY_ATTRIBUTES=0"):
        v.read(GPA, 8, private=True)
    with pytest.raises(UnsupportedByBackend, match="private memory"):
        v.write(GPA, b"x", private=True)
    assert v.read(GPA, 8, private=False) == bytes(8)
    lo, hi = kb.guest_gpa_window()
    with pytest.raises(UnsupportedByBackend, match="window"):
        v.read(lo - 8, 8)
    with pytest.raises(UnsupportedByBackend, match="window"):
        v.read(hi - 4, 8)


def test_gpa_window_top_is_reachable(vm):
    _lo, hi = guest.GPA_WINDOW
    g = vm.create_guest_memfd(2 * MIB, 3)
    vm.set_user_memory_region2(1, GMEM, hi - 2 * MIB, 2 * MIB, 0, g, 0)
    v = vm.create_vcpu()
    v.write(hi - 8, b"top!top!")
    assert g.mmap(2 * MIB).read(2 * MIB - 8, 8) == b"top!top!"
    with pytest.raises(VcpuExit) as ei:
        v.read(hi - 2 * MIB - 8, 8)
    assert ei.value.exit_reason == uapi.KVM_EXIT_MMIO


def test_two_vcpus_and_vm_close_keeps_vcpu_row_298(kb):
    vm = kb.create_vm()
    _g, _m = _bound(vm)
    v0, v1 = vm.create_vcpu(0), vm.create_vcpu(1)
    v0.write(GPA, b"zero")
    v1.write(GPA + 4, b"one!")
    assert v1.read(GPA, 8) == b"zeroone!"
    vm.close()
    assert v0.read(GPA, 8) == b"zeroone!"


def test_vcpu_used_from_another_thread(vm):
    import threading

    _g, m = _bound(vm)
    v = vm.create_vcpu()
    v.write(GPA, b"main")
    out: list[object] = []

    def worker():
        try:
            v.write(GPA + 4, b"thrd")
            out.append(v.read(GPA, 8))
            v.spin(0.1)
        except VcpuExit as exc:
            out.append(exc.detail)

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert out == [b"mainthrd", "timeout"]
    assert v.read(GPA, 8) == b"mainthrd"


@pytest.mark.parametrize("uaddr_is_mmap", [False, True])
def test_code_in_gmem_rows_277_278(vm, facts, uaddr_is_mmap):
    """The MMIO report is emulated; the emulator fetches the instruction through userspace_addr."""
    g, m = _bound(vm, uaddr_is_mmap=uaddr_is_mmap)
    m.write(0x1000, guest.SERVICE_LOOP)  # code at GPA + 0x1000
    v = vm.create_vcpu()
    if uaddr_is_mmap:
        v.run_code_at(GPA + 0x1000)  # 278: reports normally
    else:
        with pytest.raises(VcpuExit) as ei:  # 277: emulation failure
            v.run_code_at(GPA + 0x1000)
        # The emulator cannot fetch the instruction: the kvm_pvm host reports it to userspace (#277); with
        # hardware paging (SVM/NPT) KVM injects #UD into the guest, which has no IDT: a triple fault.
        if ei.value.exit_reason == uapi.KVM_EXIT_INTERNAL_ERROR or facts.is_pvm:
            assert ei.value.exit_reason == uapi.KVM_EXIT_INTERNAL_ERROR
            assert (ei.value.errno, ei.value.detail) == (0, "suberror 1")
        else:
            assert (ei.value.exit_reason, ei.value.errno) == (uapi.KVM_EXIT_SHUTDOWN, 0)
    v.write(GPA, b"fine")  # the vCPU is back in its service loop
    assert v.read(GPA, 4) == b"fine"


def test_consecutive_mmio_reads_each_exit(vm):
    """After an MMIO read exit the vCPU is reset; the next emulated read must exit too, not be served the stale
    data of the completed one (KVM keeps it in vcpu->mmio_read_completed until an emulated read consumes it)."""
    _bound(vm, pages=4)
    v = vm.create_vcpu()
    hole = GPA + MIB
    for gpa in (hole, hole, hole + P, hole + 2 * P + 8):
        with pytest.raises(VcpuExit) as ei:
            v.read(gpa, 8)
        assert (ei.value.exit_reason, ei.value.gpa, ei.value.is_write) == (uapi.KVM_EXIT_MMIO, gpa, False)
    v.write(GPA, b"ok")
    assert v.read(GPA, 2) == b"ok"
