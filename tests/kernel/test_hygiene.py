"""close()/context-manager exit leaves no fd, mapping, VM, vCPU, timer or child process behind."""

from __future__ import annotations

import contextlib
import os

import pytest

from gmemlab import uapi
from gmemlab.errors import HostSigbus, KvmError, VcpuExit
from gmemlab.kernel import open_kernel_backend

P = uapi.PAGE_SIZE
GPA = 2 << 20


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listdir fd itself
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return out


def _shared_maps() -> set[str]:
    """Shared mappings and anything KVM: gmem, kvm_run, anonymous MAP_SHARED (/dev/zero (deleted))."""
    with open("/proc/self/maps") as f:
        return {ln.strip() for ln in f if ln.split()[1].endswith("s") or "kvm" in ln}


def _timers() -> str:
    """The process's POSIX timers (the watchdogs'); a kernel without CONFIG_CHECKPOINT_RESTORE has no such
    file, and then only fds and mappings are compared."""
    try:
        with open("/proc/self/timers") as f:
            return f.read()
    except FileNotFoundError:
        return "(/proc/self/timers absent)"


def _no_children() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _workload(kb) -> None:
    vm = kb.create_vm()
    g = vm.create_guest_memfd(64 * P, 3)
    m = g.mmap(64 * P)
    m.fill(0, 64 * P, 1)
    with pytest.raises(HostSigbus):
        g.mmap(P, 64 * P).write(0, b"x")
    vm.set_user_memory_region2(1, uapi.KVM_MEM_GUEST_MEMFD, GPA, 64 * P, m.address, g, 0)
    anon = kb.mmap_anonymous(16 * P)
    vm.set_user_memory_region2(2, 0, 8 << 20, 16 * P, anon.address)
    kb.memfd_create(P)
    v = vm.create_vcpu()
    v.write(GPA, b"hello")
    assert v.read(GPA, 5) == b"hello"
    with pytest.raises(VcpuExit):
        v.read(GPA + 64 * P, 1)
    with pytest.raises(VcpuExit):
        v.spin(0.05)
    vm2 = kb.create_vm()
    with pytest.raises(KvmError):
        vm2.create_guest_memfd(1, 0)
    vm2.create_vcpu(3)
    vm.close()  # the vCPU, gmem and mappings stay open; the backend must close them


def test_no_leaks_after_close():
    with open_kernel_backend() as kb:  # warm-up: libraries, ctypes caches
        _workload(kb)
    fds, maps, timers = _fds(), _shared_maps(), _timers()
    for _ in range(2):
        kb = open_kernel_backend()
        _workload(kb)
        assert len(_fds()) > len(fds)
        kb.close()
        assert _fds() == fds
        assert _shared_maps() == maps
        assert _timers() == timers
        assert _no_children()
    with open_kernel_backend() as kb:
        _workload(kb)
    assert _fds() == fds and _shared_maps() == maps and _timers() == timers
