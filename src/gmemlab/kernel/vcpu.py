"""A vCPU performing guest reads and writes at GPAs by running the native CPL3 guest (:mod:`.guest`).

Each request (copy ``count`` bytes from ``src`` to ``dst`` in guest physical memory) is one ``KVM_RUN``
that ends in the guest's report, an MMIO store to :data:`~.guest.REPORT_GPA`. Anything else that ends
``KVM_RUN`` is what KVM did to the access and is raised as :class:`~gmemlab.errors.VcpuExit`:

* ``KVM_RUN = -EFAULT`` with ``KVM_EXIT_MEMORY_FAULT`` (``kvm_mmu_prepare_memory_fault_exit``: gmem file
  released, realkernel.md #291-#292) -> ``VcpuExit(39, EFAULT, gpa, size, flags)``;
* ``KVM_EXIT_MMIO`` elsewhere (the GPA has no memslot, #279, #287) -> ``VcpuExit(6, 0, gpa, len, is_write)``;
* ``KVM_RUN = -EFAULT`` with ``KVM_EXIT_UNKNOWN`` (no usable hva, #281) -> ``VcpuExit(0, EFAULT)``;
* ``KVM_EXIT_INTERNAL_ERROR`` (emulation failure, #277) -> ``VcpuExit(17, 0, detail="suberror N")``;
* the watchdog fired (a guest that never reports) -> ``VcpuExit(KVM_EXIT_INTR, EINTR, detail="timeout")``.

After such an exit the vCPU is brought back to the service loop: ``KVM_RUN`` with ``immediate_exit = 1``
completes any pending MMIO/PIO without re-entering the guest (with RCX forced to 0 first, or a
``rep movsb`` over MMIO would go on exiting once per byte), then ``KVM_SET_SREGS``/``KVM_SET_REGS``
restart it. Bytes the guest copied before the failing page stay copied (``rep movsb`` is ascending).

Timeouts come from a periodic per-thread timer whose signal only ``KVM_RUN`` can see
(:mod:`.watchdog`); :attr:`KernelVcpu.timeout` bounds one request (default 5 s).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable

from .. import uapi
from ..backend import PROT_READ, PROT_WRITE, REPORT_STUB_SIZE
from ..errors import KvmError, UnsupportedByBackend, VcpuExit
from . import abi, guest, libc
from .resources import Resources
from .system_slot import SystemSlot
from .watchdog import Watchdog, kvm_sigset_without_watchdog

DEFAULT_TIMEOUT = 5.0  # seconds per request; a 256 KiB request of first-touch faults takes ~2 ms


def pre_fault_memory(vcpu_fd: int, gpa: int, size: int, flags: int = 0) -> tuple[int, int]:
    """``KVM_PRE_FAULT_MEMORY`` on a vCPU fd; returns the range the kernel wrote back."""
    m = uapi.U64_MAX
    arg = uapi.KvmPreFaultMemory(gpa=gpa & m, size=size & m, flags=flags & m)
    libc.ioctl(vcpu_fd, uapi.KVM_PRE_FAULT_MEMORY, arg, "KVM_PRE_FAULT_MEMORY",
               f"gpa {gpa:#x} size {size:#x} flags {flags:#x}")
    return int(arg.gpa), int(arg.size)


class KernelVcpu:
    """vCPU ``vcpu_id`` of a VM; ``index`` selects its mailbox, stack and bounce buffer in the system slot."""

    def __init__(
        self,
        fd: int,
        vcpu_id: int,
        index: int,
        system: SystemSlot,
        run_size: int,
        resources: Resources,
        cpuid: ctypes.Structure,
    ) -> None:
        self.fd = fd
        self.vcpu_id = vcpu_id
        self.index = index
        self.timeout = DEFAULT_TIMEOUT
        self.closed = False
        self._system = system
        self._resources = resources
        self._run_size = run_size
        self.run_address = libc.mmap(run_size, PROT_READ | PROT_WRITE, libc.MAP_SHARED, fd, 0, reason="kvm_run")
        run = self.run_address
        self._immediate_exit = ctypes.c_uint8.from_address(run + abi.RUN_IMMEDIATE_EXIT)
        self._exit_reason = ctypes.c_uint32.from_address(run + abi.RUN_EXIT_REASON)
        self._mmio_phys = ctypes.c_uint64.from_address(run + abi.RUN_MMIO_PHYS_ADDR)
        self._mmio_len = ctypes.c_uint32.from_address(run + abi.RUN_MMIO_LEN)
        self._mmio_is_write = ctypes.c_uint8.from_address(run + abi.RUN_MMIO_IS_WRITE)
        self._mmio_data = ctypes.c_uint32.from_address(run + abi.RUN_MMIO_DATA)
        self._mailbox = (ctypes.c_uint64 * 3).from_address(system.host(guest.mailbox_gpa(index)))
        self.bounce_gpa = guest.bounce_gpa(index)
        self._bounce_host = system.host(self.bounce_gpa)
        self._watchdog: Watchdog | None = None
        self._watchdog_lock = threading.Lock()
        self._sregs = abi.KvmSregs()
        self._regs = abi.KvmRegs()
        self._needs_reset = True
        self._cpuid = cpuid
        try:
            self._configure()
        except BaseException:  # the caller closes the fd and drops the system slot reference
            libc.munmap(self.run_address, run_size)
            if self._watchdog is not None:
                self._watchdog.close()
            raise
        resources.add(self)

    # -- setup -----------------------------------------------------------------------------------
    def _configure(self) -> None:
        # CPUID first: KVM_SET_SREGS checks CR4 against the guest's CPUID (kvm_is_valid_cr4), so CR4.FSGSBASE
        # is EINVAL on a vCPU without CPUID on upstream kernels (the PVM host of realkernel.md is lenient).
        libc.ioctl(self.fd, abi.KVM_SET_CPUID2, self._cpuid, "KVM_SET_CPUID2")
        libc.ioctl(self.fd, abi.KVM_GET_SREGS, self._sregs, "KVM_GET_SREGS")
        s = self._sregs
        for seg, values in (
            (s.cs, guest.CODE_SEGMENT),
            *((getattr(s, n), guest.DATA_SEGMENT) for n in ("ds", "es", "fs", "gs", "ss")),
            (s.tr, guest.TSS_SEGMENT),
        ):
            for k, v in values.items():
                setattr(seg, k, v)
        s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer = guest.CR0, 0, guest.PML4_GPA, guest.CR4, 0, guest.EFER
        for k, v in guest.initial_regs(self.index).items():
            setattr(self._regs, k, v)
        self._set_signal_mask()
        self._reset()

    def _set_signal_mask(self) -> None:
        """KVM_SET_SIGNAL_MASK: while in KVM_RUN the watchdog signal is unblocked (see :mod:`.watchdog`)."""
        mask = abi.KvmSignalMask(len=8, sigset=kvm_sigset_without_watchdog())
        libc.ioctl(self.fd, abi.KVM_SET_SIGNAL_MASK, mask, "KVM_SET_SIGNAL_MASK")

    def _complete_pending(self) -> None:
        """Finish a pending emulated access without running the guest: ``KVM_RUN`` with immediate_exit.

        ``complete_emulated_mmio`` resumes the interrupted instruction before KVM looks at
        ``immediate_exit``; a ``rep movsb`` over MMIO would then run its next iteration and exit again.
        Setting RCX first (``KVM_SET_REGS`` makes the emulator re-read registers) ends the string
        instruction, so the call returns ``-EINTR`` after at most a couple of rounds. After an MMIO *read*
        RCX is 1, not 0: the resumed iteration must consume the completed read (``mmio_read_completed``);
        with RCX = 0 it would skip it and leave the flag set, and the next MMIO read of this vCPU would be
        served from that stale data without any exit (found by the lockstep fuzzer).
        """
        regs = abi.KvmRegs()
        pending_read = self._exit_reason.value == uapi.KVM_EXIT_MMIO and not self._mmio_is_write.value
        for _ in range(16):
            libc.ioctl(self.fd, abi.KVM_GET_REGS, regs, "KVM_GET_REGS")
            want = 1 if pending_read else 0
            if regs.rcx > want:
                regs.rcx = want
                libc.ioctl(self.fd, abi.KVM_SET_REGS, regs, "KVM_SET_REGS")
            pending_read = False
            self._immediate_exit.value = 1
            ret = libc.raw_ioctl(self.fd, uapi.KVM_RUN, None)
            err = libc.get_errno()
            self._immediate_exit.value = 0
            if ret == -1 and err == errno.EINTR:
                return
            if ret == -1 and err != errno.EFAULT:
                raise KvmError(err, "KVM_RUN", "immediate_exit completion")
        raise KvmError(errno.EIO, "KVM_RUN", "pending emulation did not complete with immediate_exit")

    def _reset(self) -> None:
        """Complete whatever KVM left pending, then restart the service loop from its first instruction."""
        self._complete_pending()
        libc.ioctl(self.fd, abi.KVM_SET_SREGS, self._sregs, "KVM_SET_SREGS")
        libc.ioctl(self.fd, abi.KVM_SET_REGS, self._regs, "KVM_SET_REGS")
        self._needs_reset = False

    def _thread_watchdog(self) -> Watchdog:
        """The calling thread's watchdog, ticking every quarter of :attr:`timeout`."""
        wd = self._watchdog
        tick = max(0.01, self.timeout / 4)
        if wd is None or wd.tid != threading.get_native_id():
            with self._watchdog_lock:
                if wd is not None:
                    wd.close()
                wd = self._watchdog = Watchdog(tick)
                self._set_signal_mask()
        elif wd.tick != tick:
            wd.set_tick(tick)
        return wd

    # -- running ---------------------------------------------------------------------------------
    def _decode_exit(self, err: int) -> VcpuExit:
        reason = self._exit_reason.value
        base = self.run_address
        if reason == uapi.KVM_EXIT_MEMORY_FAULT:
            flags, gpa, size = uapi.MEMORY_FAULT_EXIT.unpack(ctypes.string_at(base + abi.RUN_MEMORY_FAULT, 24))
            return VcpuExit(reason, err, gpa, size, flags)
        if reason == uapi.KVM_EXIT_MMIO:
            return VcpuExit(
                reason, err, self._mmio_phys.value, self._mmio_len.value, is_write=bool(self._mmio_is_write.value)
            )
        if reason == uapi.KVM_EXIT_INTERNAL_ERROR:
            sub = ctypes.c_uint32.from_address(base + abi.RUN_INTERNAL_SUBERROR).value
            return VcpuExit(reason, err, detail=f"suberror {sub}")
        return VcpuExit(reason, err)

    def request(self, src: int, dst: int, count: int) -> None:
        """Have the guest copy ``count`` bytes from GPA ``src`` to GPA ``dst``; raises VcpuExit."""
        if self.closed:
            raise VcpuExit(0, errno.EBADF, detail="vCPU closed")
        wd = self._thread_watchdog()
        if self._needs_reset:
            self._reset()
        mb = self._mailbox
        mb[0] = src
        mb[1] = dst
        mb[2] = count
        self._needs_reset = True
        self._run_until(self._is_mmio_report, wd)
        self._needs_reset = False  # the next KVM_RUN completes the report store and loops

    def _is_mmio_report(self) -> bool:
        return (
            self._exit_reason.value == uapi.KVM_EXIT_MMIO
            and self._mmio_phys.value == guest.REPORT_GPA
            and bool(self._mmio_is_write.value)
        )

    def _run_until(self, reported: Callable[[], bool], wd: Watchdog) -> None:
        """``KVM_RUN`` until the guest reports (``reported()`` on a successful exit); anything else that ends
        ``KVM_RUN`` resets the vCPU and raises it as :class:`VcpuExit`."""
        fd = self.fd
        run = libc.raw_ioctl
        exit_reason = self._exit_reason
        start = time.monotonic()
        while True:
            exit_reason.value = 0
            if run(fd, uapi.KVM_RUN, None) == 0:
                if reported():
                    return
                exc = self._decode_exit(0)
                break
            err = libc.get_errno()
            if err == errno.EINTR:
                wd.consume()
                if time.monotonic() - start < self.timeout:
                    continue  # a tick before the deadline, or another signal (its handler runs now)
                exc = VcpuExit(uapi.KVM_EXIT_INTR, errno.EINTR, detail="timeout")
                break
            exc = self._decode_exit(err)
            break
        self._reset()
        raise exc

    def run_code_at(self, gpa: int, timeout: float | None = None) -> None:
        """Enter the guest at ``gpa`` (service-loop register conventions) until it reports; raises VcpuExit.

        For code the caller placed in guest memory, e.g. a copy of :data:`~.guest.SERVICE_LOOP` in a gmem
        page to re-enact realkernel.md #277/#278. The vCPU returns to the service loop afterwards.
        """
        saved = self._regs.rip, self.timeout
        self._regs.rip = gpa
        if timeout is not None:
            self.timeout = timeout
        try:
            self._reset()
            self.request(0, 0, 0)
        finally:
            self._regs.rip, self.timeout = saved
            self._needs_reset = True

    def spin(self, timeout: float) -> None:
        """Run a guest that never reports (``jmp $``) until the watchdog stops it: raises VcpuExit."""
        self.run_code_at(guest.SPIN_GPA, timeout)

    def _enter_at(self, gpa: int, rflags: int, reported: Callable[[], bool]) -> None:
        """Enter the guest at ``gpa`` with ``rflags`` until ``reported()``; the service loop is restored after."""
        if self.closed:
            raise VcpuExit(0, errno.EBADF, detail="vCPU closed")
        wd = self._thread_watchdog()
        saved = self._regs.rip, self._regs.rflags
        self._regs.rip, self._regs.rflags = gpa, rflags
        try:
            self._reset()
            self._needs_reset = True
            self._run_until(reported, wd)
        finally:
            self._regs.rip, self._regs.rflags = saved
            self._needs_reset = True

    # -- Vcpu protocol ---------------------------------------------------------------------------
    def _check(self, gpa: int, length: int, private: bool | None) -> None:
        if private:
            raise UnsupportedByBackend("private memory (KVM_CAP_MEMORY_ATTRIBUTES=0)")
        lo, hi = guest.GPA_WINDOW
        if gpa < lo or gpa + length > hi:
            raise UnsupportedByBackend(
                f"guest access [{gpa:#x}, {gpa + length:#x}) outside the kernel backend's GPA window [{lo:#x}, {hi:#x})"
            )

    def read(self, gpa: int, length: int, private: bool | None = None) -> bytes:
        if length <= 0:
            return b""
        self._check(gpa, length, private)
        out = bytearray()
        chunk = guest.BOUNCE_SIZE
        for off in range(0, length, chunk):
            n = min(chunk, length - off)
            self.request(gpa + off, self.bounce_gpa, n)
            out += ctypes.string_at(self._bounce_host, n)
        return bytes(out)

    def write(self, gpa: int, data: bytes, private: bool | None = None) -> None:
        if not data:
            return
        self._check(gpa, len(data), private)
        data = bytes(data)
        chunk = guest.BOUNCE_SIZE
        for off in range(0, len(data), chunk):
            piece = data[off : off + chunk]
            ctypes.memmove(self._bounce_host, piece, len(piece))
            self.request(self.bounce_gpa, gpa + off, len(piece))

    def execute(self, gpa: int, private: bool | None = None) -> int:
        """Run the :func:`~gmemlab.backend.report_stub` code at ``gpa``; returns the value it reported.

        The vCPU fetches and runs the stub from ``gpa`` natively; the stub jumps to the report routine in the
        system slot, whose MMIO store KVM emulates by fetching it from that slot's ``userspace_addr``."""
        self._check(gpa, REPORT_STUB_SIZE, private)
        self._enter_at(gpa, guest.RFLAGS, self._is_mmio_report)
        return int(self._mmio_data.value)

    def pre_fault_memory(self, gpa: int, size: int, flags: int = 0) -> tuple[int, int]:
        return pre_fault_memory(self.fd, gpa, size, flags)

    def _release(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self.run_address:
            libc.munmap(self.run_address, self._run_size)
            self.run_address = 0
        os.close(self.fd)
        self._system.put()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._resources.discard(self)
        self._release()

    def __repr__(self) -> str:
        return f"<KernelVcpu id={self.vcpu_id} fd={self.fd}>"
