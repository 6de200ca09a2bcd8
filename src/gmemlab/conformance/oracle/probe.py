"""What a section of the oracle sees: the backend, and cells rendered in the recording's vocabulary.

realkernel-private.md writes outcomes as ``ok``, an errno name, ``ok (0x21)`` for a host read, ``SIGBUS``,
``HLT outs=[0x70]`` for what the probe's guest read and reported, ``MEMORY_FAULT flags=0x8 gpa=0x2000
size=0x1000 (KVM_RUN EFAULT)`` for a memory-fault exit, and ``error_offset untouched`` when the struct's
field still holds the caller's value afterwards. :class:`Probe` renders the backend's answers the same way,
so a row is reproduced when the rendered cell equals the recorded one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...backend import report_stub
from ...errors import ConversionError, HostSigbus, HostSigsegv, KvmError, VcpuExit
from ...uapi import (
    KVM_EXIT_MEMORY_FAULT,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    Cap,
    VmType,
    cap_guest_memfd_memory_attributes,
)

CANARY = 0xE0E0E0E0E0  # the probe's input error_offset, non-zero on purpose
PRIVATE = KVM_MEMORY_ATTRIBUTE_PRIVATE
P = 4096


class Probe:
    """Runs a section's operations on ``system`` and keeps ``row id -> rendered cell``.

    ``base`` is where the section 4 guest layout starts: 0 on the model (as recorded), the bottom of the
    backend's vCPU window on a kernel backend; guest physical addresses in cells are rendered relative to it.
    """

    def __init__(self, system: Any, base: int = 0) -> None:
        self.system = system
        self.base = base
        self.cells: dict[str, str] = {}

    def row(self, row_id: str, cell: str) -> str:
        self.cells[row_id] = cell
        return cell

    # -- outcomes ------------------------------------------------------------------------------------------
    @staticmethod
    def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        """``ok`` or the errno name (SIGBUS/SIGSEGV for a host access the kernel refused)."""
        try:
            fn(*args, **kwargs)
        except KvmError as exc:
            return exc.errname
        except HostSigbus:
            return "SIGBUS"
        except HostSigsegv:
            return "SIGSEGV"
        return "ok"

    @staticmethod
    def attrs2(gmem: Any, offset: int, size: int, attributes: int, **kwargs: Any) -> str:
        """SET_ATTRIBUTES2 with the canary in error_offset: ``ok, error_offset untouched``, ``EINVAL, ...``."""
        kwargs.setdefault("error_offset", CANARY)
        given = kwargs["error_offset"]
        try:
            after = gmem.set_memory_attributes2(offset, size, attributes, **kwargs)
            head = "ok"
        except ConversionError as exc:
            after, head = exc.error_offset, exc.errname
        tail = "error_offset untouched" if after == given else f"error_offset {after:#x}"
        return f"{head}, {tail}"

    @staticmethod
    def host_read(mapping: Any, offset: int) -> str:
        try:
            return f"ok ({mapping.read(offset, 1)[0]:#04x})"
        except HostSigbus:
            return "SIGBUS"

    @staticmethod
    def host_write(mapping: Any, offset: int, byte: int) -> str:
        """Write one byte and read it back: ``ok (0x71)``."""
        try:
            mapping.write(offset, bytes([byte]))
            return f"ok ({mapping.read(offset, 1)[0]:#04x})"
        except HostSigbus:
            return "SIGBUS"

    def exit_cell(self, ex: VcpuExit) -> str:
        if ex.exit_reason == KVM_EXIT_MEMORY_FAULT:
            run = "KVM_RUN EFAULT" if ex.errno else "KVM_RUN 0"
            return f"MEMORY_FAULT flags={ex.flags:#x} gpa={ex.gpa - self.base:#x} size={ex.size:#x} ({run})"
        return str(ex)

    def guest_read(self, cpu: Any, gpas: list[int]) -> str:
        """The probe's guest reads one byte at each GPA (relative to ``base``), reports it, halts."""
        outs = []
        try:
            for gpa in gpas:
                outs.append(cpu.read(self.base + gpa, 1)[0])
        except VcpuExit as ex:
            return self.exit_cell(ex)
        return "HLT outs=[" + ",".join(f"{b:#04x}" for b in outs) + "]"

    def guest_execute(self, cpu: Any, gpa: int, value: int, write: bool = False) -> str:
        """The guest jumps to ``gpa`` (after writing code that reports ``value`` there, if ``write``): the
        probe's ``out 0x55; hlt`` is the interface's report stub (:func:`gmemlab.backend.report_stub`)."""
        try:
            if write:
                cpu.write(self.base + gpa, report_stub(value))
            return f"HLT outs=[{cpu.execute(self.base + gpa):#04x}]"
        except VcpuExit as ex:
            return self.exit_cell(ex)

    def pre_fault(self, cpu: Any, gpa: int, size: int, flags: int = 0) -> str:
        """``KVM_PRE_FAULT_MEMORY``: ``ok (gpa now X, size left Y)`` with what the kernel wrote back; an error
        writes back nothing (the kernel updates the range only with progress), so the range given is shown."""
        try:
            now, left = cpu.pre_fault_memory(self.base + gpa, size, flags)
            return f"ok (gpa now {now - self.base:#x}, size left {left:#x})"
        except KvmError as exc:
            return f"{exc.errname} (gpa now {gpa:#x}, size left {size:#x})"

    def guest_write_read(self, cpu: Any, gpa: int, byte: int) -> str:
        try:
            cpu.write(self.base + gpa, bytes([byte]))
        except VcpuExit as ex:
            return self.exit_cell(ex)
        return self.guest_read(cpu, [gpa])

    # -- what the kernel offers -------------------------------------------------------------------------------
    def mode(self) -> str:
        """The attribute mechanism the probe used: ``inplace`` (gmem attributes), ``vmattrs`` (per-VM), ``none``."""
        vm = self.system.create_vm(int(VmType.SW_PROTECTED))
        try:
            if vm.check_extension(cap_guest_memfd_memory_attributes()) & PRIVATE:
                return "inplace"
            if vm.check_extension(Cap.MEMORY_ATTRIBUTES) & PRIVATE:
                return "vmattrs"
            return "none"
        finally:
            vm.close()
