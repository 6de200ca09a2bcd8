"""Errors as the kernel reports them (DESIGN.md principle 4).

* A failing call raises :class:`KvmError`, an ``OSError`` carrying the kernel's errno, the operation
  (``KVM_CREATE_GUEST_MEMFD``, ``fallocate``...) and a short reason naming the offending argument.
* A conversion refused with EAGAIN carries ``error_offset`` (spec 2.14 step 7).
* A host touch the kernel answers with SIGBUS raises :class:`HostSigbus`.
* A guest access KVM cannot serve ends ``KVM_RUN`` with a :class:`VcpuExit` (memory fault, MMIO, ...).
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import Any

# The kernel's spelling where libc has aliases (ENOTSUP == EOPNOTSUPP, EWOULDBLOCK == EAGAIN).
_PREFERRED = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN", _errno.EDEADLK: "EDEADLK"}


def errno_name(err: int) -> str:
    """Symbolic name of an errno as the kernel spells it."""
    return _PREFERRED.get(err) or _errno.errorcode.get(err, str(err))


class GmemlabError(Exception):
    """Base of every error gmemlab raises on purpose."""


class KvmError(OSError, GmemlabError):
    """A system call failed with the kernel's errno.

    ``str()`` reads like ``KVM_CREATE_GUEST_MEMFD: EINVAL (Invalid argument): size 4097 not page aligned``.
    """

    def __init__(self, err: int, op: str, reason: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.op = op
        self.reason = reason

    @property
    def errname(self) -> str:
        return errno_name(self.errno or 0)

    def __str__(self) -> str:
        text = f"{self.op}: {self.errname} ({self.strerror})"
        return f"{text}: {self.reason}" if self.reason else text

    def __reduce__(self) -> tuple[Any, ...]:  # keep pickling (multiprocessing) working with the extra arguments
        return (type(self), (self.errno, self.op, self.reason))


class ConversionError(KvmError):
    """KVM_GMEM_CONVERT_* failed; ``error_offset`` is the byte offset of the failing folio (EAGAIN)."""

    def __init__(self, err: int, op: str, reason: str = "", error_offset: int = 0) -> None:
        super().__init__(err, op, reason)
        self.error_offset = error_offset

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errno, self.op, self.reason, self.error_offset))


class HostSigbus(GmemlabError):
    """A host userspace access through a guest_memfd mapping that the kernel answers with SIGBUS."""

    def __init__(self, offset: int, write: bool, reason: str = "") -> None:
        self.offset = offset
        self.write = write
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        kind = "write" if self.write else "read"
        text = f"SIGBUS on host {kind} at mapping offset {self.offset:#x}"
        return f"{text}: {self.reason}" if self.reason else text

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.offset, self.write, self.reason))


class HostSigsegv(GmemlabError):
    """A host access outside any mapping, or a write through a read-only mapping (SIGSEGV)."""

    def __init__(self, offset: int, write: bool, reason: str = "") -> None:
        self.offset = offset
        self.write = write
        self.reason = reason
        super().__init__(f"SIGSEGV on host {'write' if write else 'read'} at offset {offset:#x}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.offset, self.write, self.reason))


@dataclass(frozen=True)
class VcpuExit(GmemlabError):
    """``KVM_RUN`` stopped before the guest access completed.

    ``exit_reason`` uses the uAPI numbers (39 = KVM_EXIT_MEMORY_FAULT, 6 = KVM_EXIT_MMIO, ...);
    ``errno`` is KVM_RUN's negative return (0 when KVM_RUN returned 0 with the exit).
    """

    exit_reason: int
    errno: int = 0
    gpa: int = 0
    size: int = 0
    flags: int = 0
    is_write: bool = False
    detail: str = ""

    def __str__(self) -> str:
        run = f"KVM_RUN=-1 {errno_name(self.errno)}" if self.errno else "KVM_RUN=0"
        if self.exit_reason == 39:  # KVM_EXIT_MEMORY_FAULT (numbers as in EXIT_NAMES: errors imports nothing)
            what = f"MEMORY_FAULT(gpa {self.gpa:#x} size {self.size:#x} flags {self.flags:#x})"
        elif self.exit_reason == 6:  # KVM_EXIT_MMIO
            what = f"MMIO(gpa {self.gpa:#x} {'write' if self.is_write else 'read'})"
        else:
            what = EXIT_NAMES.get(self.exit_reason, f"exit {self.exit_reason}")
        text = f"{run}, exit={what}"
        return f"{text}: {self.detail}" if self.detail else text


EXIT_NAMES = {
    0: "UNKNOWN",
    2: "IO",
    5: "HLT",
    6: "MMIO",
    8: "SHUTDOWN",
    9: "FAIL_ENTRY",
    10: "INTR",
    17: "INTERNAL_ERROR",
    39: "MEMORY_FAULT",
}


class UnsupportedByBackend(GmemlabError):
    """The backend cannot perform this operation at all (e.g. a capability the kernel lacks).

    Conformance cases that need it are skipped with ``what`` as the reason.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(what)


class GmemError(Exception):
    """Internal to the model: a ``kvm_gmem_get_pfn`` failure carrying the errno KVM returns (spec 2.8).

    The fault path turns it into a ``KVM_EXIT_MEMORY_FAULT`` exit."""

    def __init__(self, err: int, reason: str) -> None:
        super().__init__(reason)
        self.errno = err
        self.reason = reason


class FaultRefused(Exception):
    """Internal to the model: a guest_memfd fault handler refused a host fault (SIGBUS for a CPU
    access, EFAULT for GUP)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FolioBusy(Exception):
    """Internal to the model: a folio split or merge met an elevated refcount; callers turn it into
    EAGAIN (workloads 3.5)."""

    def __init__(self, index: int, what: str) -> None:
        super().__init__(f"folio at index {index:#x} has an elevated refcount ({what})")
        self.index = index
        self.what = what


class UnrepresentableArgument(GmemlabError, ValueError):
    """A Python value that the C type of a uAPI argument cannot hold (``2**40`` as a ``__u32`` slot, a fill
    byte of 300, a string where an integer goes). Both backends refuse it before anything reaches the kernel,
    with the same words; the kernel client never truncates a value to make it fit.

    A value fits a C type of ``bits`` bits when ``-2**(bits-1) <= value < 2**bits``: either its unsigned
    pattern or its two's complement, as a C caller's implicit conversion would pass it (``-1`` as a ``__u64`` is
    ``0xffff...``)."""

    def __init__(self, op: str, name: str, value: object, ctype: str) -> None:
        self.op = op
        self.name = name
        self.value = value
        self.ctype = ctype
        if ctype == "bytes":
            what = f"{name} must be bytes, got {type(value).__name__}"
        elif isinstance(value, int) and not isinstance(value, bool):
            what = f"{name} = {value:#x} does not fit {ctype}"
        else:
            what = f"{name} must be an integer ({ctype}), got {type(value).__name__} {value!r}"
        super().__init__(f"{op}: {what}; not passed to the kernel")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.op, self.name, self.value, self.ctype))


class OutsideReservation(GmemlabError, ValueError):
    """A call on a host mapping whose address range leaves the mapping's reservation (the mapping and the
    PROT_NONE guard regions around it, :data:`gmemlab.backend.MAPPING_GUARD` each side). The kernel client
    never passes such an address to the kernel, so it can never touch the Python process's own memory; the
    model refuses the same calls with the same words."""

    def __init__(self, op: str, offset: object, length: object, lo: int, hi: int) -> None:
        self.op = op
        self.offset = offset
        self.length = length
        super().__init__(f"{op}: [{offset!r}, +{length!r}) leaves the mapping's reservation [{lo:#x}, {hi:#x}) "
                         "(offsets relative to the mapping); not passed to the kernel")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.op, self.offset, self.length, 0, 0))


class UsageError(GmemlabError):
    """Bad input to gmemlab itself (a CLI argument, a scenario file); printed without a traceback."""
