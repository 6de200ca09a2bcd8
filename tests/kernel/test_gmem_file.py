"""KVM_CREATE_GUEST_MEMFD, file operations, mmap and fallocate: realkernel.md rows #24-#202."""

from __future__ import annotations

import errno
import os

import pytest

from gmemlab import uapi
from gmemlab.backend import MAP_PRIVATE, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE
from gmemlab.errors import HostSigbus, KvmError, UnsupportedByBackend
from gmemlab.kernel import libc

P = uapi.PAGE_SIZE
KEEP = uapi.FALLOC_FL_KEEP_SIZE
PUNCH = uapi.FALLOC_FL_PUNCH_HOLE | uapi.FALLOC_FL_KEEP_SIZE


def _errno(fn, *args, **kw) -> int:
    try:
        fn(*args, **kw)
    except KvmError as exc:
        return exc.errno
    return 0


# --- create: rows #24-#74 ------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [0, 1, 2, 3])
def test_create_valid_flags(vm, flags):
    g = vm.create_guest_memfd(P, flags)
    assert g.fd > 0 and g.size == P and g.flags == flags
    assert g.fstat().st_size == P


def test_flag_bits_row_32(vm):
    accepted = [b for b in range(64) if _errno(vm.create_guest_memfd, P, 1 << b) == 0]
    assert accepted == [0, 1]
    assert _errno(vm.create_guest_memfd, P, 1 << 2) == errno.EINVAL
    assert _errno(vm.create_guest_memfd, P, 0x100000000) == errno.EINVAL


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        (0, False),
        (1, False),
        (4095, False),
        (4096, True),
        (4097, False),
        (8192, True),
        (1 << 40, True),
        ((1 << 63) - 4096, True),
        (1 << 63, False),
        ((1 << 64) - 4096, False),
        ((1 << 64) - 1, False),
    ],
)
def test_create_sizes_rows_36_to_65(vm, size, ok):
    err = _errno(vm.create_guest_memfd, size, 3)
    assert err == (0 if ok else errno.EINVAL)


def test_create_error_carries_op_and_reason(vm):
    with pytest.raises(KvmError) as ei:
        vm.create_guest_memfd(4097, 0)
    assert ei.value.op == "KVM_CREATE_GUEST_MEMFD" and "4097" in ei.value.reason.replace("0x1001", "4097")


def test_reserved_ignored_rows_69_to_71(vm):
    vm.create_guest_memfd(P, 3, reserved=(1,))
    vm.create_guest_memfd(P, 3, reserved=(0, 0, 0, 0, 0, (1 << 64) - 1))
    vm.create_guest_memfd(P, 3, reserved=((1 << 64) - 1,) * 6)


def gmem_file_name(facts) -> str:
    """An anonymous inode up to 6.18 (#76); from 6.19 guest_memfd has its own pseudo-fs (spec 2.3, U6.19)."""
    return "anon_inode:[kvm-gmem]" if facts.version < (6, 19) else "/[kvm-gmem] (deleted)"


def test_distinct_inodes_row_74_and_identity_rows_75_76(vm, facts):
    a, b = vm.create_guest_memfd(P, 0), vm.create_guest_memfd(2 * P, 0)
    assert a.fstat().st_ino != b.fstat().st_ino
    assert (a.fstat().st_size, b.fstat().st_size) == (P, 2 * P)
    assert os.readlink(f"/proc/self/fd/{a.fd}") == gmem_file_name(facts)
    import fcntl

    assert not fcntl.fcntl(a.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # created without O_CLOEXEC


def test_close_vm_keeps_gmem_row_82(kb):
    vm = kb.create_vm()
    g = vm.create_guest_memfd(4 * P, 3)
    vm.close()
    g.fallocate(KEEP, 0, P)
    m = g.mmap(P)
    m.write(0, b"alive")
    assert m.read(0, 5) == b"alive"


# --- file operations: rows #83-#113 --------------------------------------------------------------
@pytest.mark.parametrize("flags", [0, 1, 3])
def test_file_ops_rows_83_to_101(vm, flags):
    g = vm.create_guest_memfd(4 * P, flags)
    assert _errno(g.read, 64) == errno.EINVAL
    assert _errno(g.write, b"x" * 64) == errno.EINVAL
    assert _errno(g.pread, 64, 0) == errno.ESPIPE
    assert _errno(g.pwrite, b"x" * 64, 0) == errno.ESPIPE
    assert _errno(g.lseek, 0, os.SEEK_SET) == errno.ESPIPE
    assert _errno(g.lseek, 0, os.SEEK_END) == errno.ESPIPE
    for size in (8 * P, P, 4 * P):
        assert _errno(g.ftruncate, size) == errno.EINVAL
    st = g.fstat()
    assert (st.st_size, st.st_blksize, st.st_blocks) == (4 * P, P, 0)


def test_convert_unsupported(vm):
    g = vm.create_guest_memfd(P, 3)
    with pytest.raises(UnsupportedByBackend, match="KVM_CAP_GMEM_CONVERSION"):
        g.convert(0, P, to_shared=True)


def test_closed_fd_ops_ebadf(vm):
    g = vm.create_guest_memfd(P, 3)
    g.close()
    g.close()  # idempotent
    # the number may be reused by now; only check a fallocate on a surely-closed fd number
    assert _errno(libc.fallocate, 1 << 20, KEEP, 0, P) == errno.EBADF


# --- mmap: rows #114-#163 ------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [0, 2])
def test_mmap_needs_mmap_flag_rows_114_115(vm, flags):
    g = vm.create_guest_memfd(4 * P, flags)
    assert _errno(g.mmap, P) == errno.ENODEV
    assert _errno(g.mmap, 4 * P) == errno.ENODEV


def test_mmap_variants_rows_116_to_127(vm):
    g = vm.create_guest_memfd(4 * P, 3)
    assert g.mmap(P, 0, PROT_READ | PROT_WRITE, libc.MAP_SHARED_VALIDATE).address
    assert _errno(g.mmap, P, 0, PROT_READ | PROT_WRITE, MAP_PRIVATE) == errno.EINVAL
    assert _errno(g.mmap, P, 0, PROT_READ, MAP_PRIVATE) == errno.EINVAL
    assert g.mmap(P, 0, PROT_READ).address
    assert g.mmap(P, 0, PROT_NONE).address
    assert _errno(g.mmap, P, 0, PROT_EXEC) == errno.EPERM
    assert _errno(g.mmap, P, 0, PROT_READ | PROT_WRITE | PROT_EXEC) == errno.EPERM
    assert g.mmap(P, 0, PROT_READ | PROT_WRITE, libc.MAP_SHARED | libc.MAP_POPULATE).address
    assert _errno(g.mmap, P, 100) == errno.EINVAL
    assert g.mmap(P, 4 * P).address  # offset == size is accepted by mmap ...


def test_mapping_name_row_141(vm, facts):
    g = vm.create_guest_memfd(4 * P, 3)
    m = g.mmap(4 * P)
    start = f"{m.address:x}-"
    with open("/proc/self/maps") as f:
        line = next(ln for ln in f if ln.startswith(start))
    assert line.split()[1] == "rw-s" and line.rstrip().endswith(gmem_file_name(facts))


def test_coherent_mappings_rows_143_145(vm):
    g = vm.create_guest_memfd(4 * P, 3)
    a, b = g.mmap(4 * P), g.mmap(4 * P)
    a.write(100, b"coherent")
    assert b.read(100, 8) == b"coherent"
    a.munmap()
    b.munmap()
    assert g.mmap(4 * P).read(100, 8) == b"coherent"


def test_madvise_rows_148_to_157(vm):
    g = vm.create_guest_memfd(4 * P, 3)
    m = g.mmap(4 * P)
    m.fill(0, 2 * P, 0x5A)
    m.madvise(0, 4 * P, libc.MADV_DONTNEED)
    assert m.read(0, 1) == b"\x5a"  # shared file mapping: data stays in the page cache (#149)
    m.madvise(0, P, libc.MADV_REMOVE)  # punches the file (#150-#151)
    assert m.read(0, 1) == b"\x00" and m.read(P, 1) == b"\x5a"
    with pytest.raises(KvmError) as ei:
        m.madvise(0, P, 8)  # MADV_FREE: only private anon (#152)
    assert ei.value.errno == errno.EINVAL
    m.madvise(0, 4 * P, libc.MADV_POPULATE_READ)
    m.madvise(0, 4 * P, libc.MADV_POPULATE_WRITE)


def test_populate_write_private_efault_row_162(vm):
    g = vm.create_guest_memfd(4 * P, 1)
    m = g.mmap(4 * P)
    with pytest.raises(KvmError) as ei:
        m.madvise(0, 4 * P, libc.MADV_POPULATE_WRITE)
    assert ei.value.errno == errno.EFAULT


def test_mmap_supported_selftest_row_164(vm):
    g = vm.create_guest_memfd(4 * P, 3)
    m = g.mmap(4 * P)
    m.fill(0, 4 * P, 0xAA)
    assert m.read(0, 4 * P) == b"\xaa" * 4 * P
    g.fallocate(PUNCH, 0, P)
    assert m.read(0, P) == bytes(P) and m.read(P, 3 * P) == b"\xaa" * 3 * P
    m.fill(0, P, 0xAA)
    assert m.read(0, 4 * P) == b"\xaa" * 4 * P


def test_fault_overflow_selftest_row_165(vm):
    g = vm.create_guest_memfd(4 * P, 3)
    m = g.mmap(16 * P)
    with pytest.raises(HostSigbus) as ei:
        m.fill(0, 16 * P, 0xAA)
    assert (ei.value.offset, ei.value.write) == (4 * P, True)
    assert "i_size" in ei.value.reason
    with pytest.raises(HostSigbus) as ei:
        m.read(4 * P, 1)
    assert (ei.value.offset, ei.value.write) == (4 * P, False)
    assert m.read(0, 4 * P) == b"\xaa" * 4 * P


def test_fault_private_selftest_row_166(vm):
    g = vm.create_guest_memfd(4 * P, 1)
    m = g.mmap(4 * P)
    with pytest.raises(HostSigbus) as ei:
        m.fill(0, 4 * P, 0xAA)
    assert (ei.value.offset, ei.value.write) == (0, True)
    assert "INIT_SHARED" in ei.value.reason
    with pytest.raises(HostSigbus):
        m.read(0, 1)


# --- fallocate: rows #169-#202 -------------------------------------------------------------------
@pytest.mark.parametrize("flags", [0, 1, 3])
def test_fallocate_selftest_sequence(vm, flags):
    size = 4 * P
    g = vm.create_guest_memfd(size, flags)
    assert _errno(g.fallocate, KEEP, 0, size) == 0
    assert _errno(g.fallocate, PUNCH, P - 1, P) == errno.EINVAL
    assert _errno(g.fallocate, KEEP, size, P) == errno.EINVAL
    assert _errno(g.fallocate, KEEP, size + P, P) == errno.EINVAL
    assert _errno(g.fallocate, PUNCH, size, P) == 0
    assert _errno(g.fallocate, PUNCH, size + P, P) == 0
    assert _errno(g.fallocate, PUNCH, 0, P - 1) == errno.EINVAL
    assert _errno(g.fallocate, PUNCH, P, P) == 0
    assert _errno(g.fallocate, KEEP, P, P) == 0


@pytest.mark.parametrize("flags", [0, 3])
def test_invalid_punch_hole(vm, flags):
    g = vm.create_guest_memfd(4 * P, flags)
    for off, ln in (
        (0, 1),
        (0, P - 1),
        (0, P + 1),
        (1, 1),
        (1, P - 1),
        (1, P),
        (1, P + 1),
        (P, 1),
        (P, P - 1),
        (P, P + 1),
    ):
        assert _errno(g.fallocate, PUNCH, off, ln) == errno.EINVAL


@pytest.mark.parametrize(
    ("mode", "off", "ln", "err"),
    [
        (0, 0, P, errno.EOPNOTSUPP),
        (KEEP, 0, P, 0),
        (KEEP, 15 * P, 2 * P, errno.EINVAL),
        (KEEP, 100, P, errno.EINVAL),
        (KEEP, 0, 100, errno.EINVAL),
        (uapi.FALLOC_FL_PUNCH_HOLE, 0, P, errno.EOPNOTSUPP),
        (PUNCH, 15 * P, 4 * P, 0),
        (PUNCH, 1 << 40, P, 0),
        (0x10, 0, P, errno.EOPNOTSUPP),
        (0x11, 0, P, errno.EOPNOTSUPP),
        (0x8, 0, P, errno.EOPNOTSUPP),
        (0x20, 0, P, errno.EOPNOTSUPP),
        (0x41, 0, P, errno.EOPNOTSUPP),
        (0x80, 0, P, errno.EOPNOTSUPP),
        (0x7, 0, P, errno.EOPNOTSUPP),
        (0x101, 0, P, errno.EOPNOTSUPP),
        (KEEP, 0, 0, errno.EINVAL),
        (KEEP, -P, P, errno.EINVAL),
        (PUNCH, (1 << 63) - P, 2 * P, errno.EFBIG),
    ],
)
def test_fallocate_modes_rows_175_to_196(vm, mode, off, ln, err):
    g = vm.create_guest_memfd(16 * P, 3)
    assert _errno(g.fallocate, mode, off, ln) == err


def test_punch_then_read_zero_rows_197_198(vm):
    g = vm.create_guest_memfd(4 * P, 3)
    m = g.mmap(4 * P)
    m.fill(0, 4 * P, 0x77)
    g.fallocate(PUNCH, 2 * P, 2 * P)
    assert m.read(2 * P, 2 * P) == bytes(2 * P) and m.read(0, 2 * P) == b"\x77" * 2 * P
    m.write(2 * P, b"again")
    assert m.read(2 * P, 5) == b"again"


def test_huge_sparse_file_rows_199_202(vm):
    g = vm.create_guest_memfd((1 << 63) - P, 3)
    last = (1 << 63) - 2 * P
    g.fallocate(KEEP, last, P)
    m = g.mmap(P, last)
    m.write(0, b"end")
    assert m.read(0, 3) == b"end"
    g.fallocate(PUNCH, 0, (1 << 63) - P)


def test_setfl_cannot_set_fasync_without_a_fasync_hook(vm):
    """setfl(): FASYNC is not in SETFL_MASK; only f_op->fasync sets it and guest_memfd has none (the model
    kept it until the lockstep fuzzer compared F_GETFL inside 6.18.2)."""
    g = vm.create_guest_memfd(P, 0)
    before = g.fcntl(3)
    g.fcntl(4, before | os.O_ASYNC | os.O_NONBLOCK)
    assert g.fcntl(3) == before | os.O_NONBLOCK
