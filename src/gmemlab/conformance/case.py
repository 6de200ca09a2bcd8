"""Conformance cases: written once against :mod:`gmemlab.backend`, run on any backend.

A case is a function of a :class:`Ctx`. It talks to the backend only through ``ctx.system`` (a
recording proxy), states expectations with ``ctx.expect_*`` and ``ctx.check``, and skips with a reason
(``ctx.skip``, ``ctx.require_cap``) when the backend lacks what it needs. Each cases module collects its
cases in a :class:`CaseList` (``@CASES.case(section, profiles)``), tagged with the profiles they apply to
and the spec section they come from; :mod:`gmemlab.conformance.cases` lists the modules explicitly.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import HostSigbus, HostSigsegv, KvmError, UnsupportedByBackend, VcpuExit, errno_name
from ..uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE, PROFILES, Cap, cap_guest_memfd_memory_attributes, lineage
from .constants import LINUX
from .record import Proxy, Recorder, summarize_bytes


class CaseFailed(AssertionError):
    pass


class CaseSkipped(Exception):
    pass


@dataclass(frozen=True)
class Case:
    name: str
    func: Callable[[Ctx], None]
    profiles: frozenset[str]
    section: str
    doc: str = ""
    params: tuple[tuple[str, Any], ...] = ()


class CaseList(list[Case]):
    """The cases of one module, in the order they are defined."""

    def case(
        self,
        section: str,
        profiles: Iterable[str] = LINUX,
        name: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Callable[[Callable[..., None]], Callable[..., None]]:
        """Add a case; ``params`` are passed to the function as keyword arguments."""

        def register(func: Callable[..., None]) -> Callable[..., None]:
            case_name = name or func.__name__
            bound = func if not params else (lambda ctx, _f=func, _p=dict(params): _f(ctx, **_p))
            self.append(
                Case(
                    case_name,
                    bound,
                    frozenset(profiles),
                    section,
                    (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else "",
                    tuple(sorted((params or {}).items())),
                )
            )
            return func

        return register


ERRNO_NAMES = {name: getattr(_errno, name) for name in dir(_errno) if name.startswith("E")}


@dataclass
class Ctx:
    """What a case sees: the recorded backend, the profile's flag names, expectations."""

    system: Proxy
    recorder: Recorder
    profile: str
    notes: list[str] = field(default_factory=list)

    # -- profile vocabulary -----------------------------------------------------------------------------
    @property
    def MMAP(self) -> int:
        """The flag that allows mmap: MMAP (6.18) or SUPPORT_SHARED (RFC v2); both are bit 0."""
        return 1 << 0

    @property
    def INIT_SHARED(self) -> int:
        return 1 << 1

    @property
    def INIT_PRIVATE(self) -> int:
        return 1 << 1

    def since(self, profile: str) -> bool:
        """Whether the profile under test is ``profile`` or descends from it (``ctx.since("linux-7.3")``)."""
        return profile in lineage(self.profile) if self.profile in PROFILES else False

    def in_place(self, on: Any = None) -> bool:
        """Whether in-place conversion is on: linux-7.4 and KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES has PRIVATE
        (on /dev/kvm, or on the VM ``on``)."""
        if not self.since("linux-7.4"):
            return False
        return bool((on or self.system).check_extension(cap_guest_memfd_memory_attributes())
                    & KVM_MEMORY_ATTRIBUTE_PRIVATE)

    # -- expectations -----------------------------------------------------------------------------------
    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise CaseFailed(message)

    def skip(self, reason: str) -> None:
        raise CaseSkipped(reason)

    def require_cap(self, cap: Cap, on: Any = None, mask: int | None = None) -> int:
        value = int((on or self.system).check_extension(cap))
        if not value or (mask is not None and not value & mask):
            self.skip(f"needs {cap.name and 'KVM_CAP_' + cap.name} ({int(cap)}), which is {value} here")
        return value

    def expect_errno(self, err: int | str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> KvmError:
        want = ERRNO_NAMES[err] if isinstance(err, str) else err
        try:
            result = fn(*args, **kwargs)
        except KvmError as exc:
            if exc.errno != want:
                raise CaseFailed(f"expected {errno_name(want)}, got {exc}") from None
            return exc
        raise CaseFailed(f"expected {errno_name(want)}, got success ({result!r})")

    def expect_fail(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> KvmError:
        """Any errno will do (the selftest asserts only ``< 0``)."""
        try:
            result = fn(*args, **kwargs)
        except KvmError as exc:
            return exc
        raise CaseFailed(f"expected failure, got success ({result!r})")

    def expect_ok(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UnsupportedByBackend:
            raise
        except (KvmError, HostSigbus, HostSigsegv, VcpuExit) as exc:
            raise CaseFailed(f"expected success, got {exc}") from None

    def expect_sigbus(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> HostSigbus:
        try:
            fn(*args, **kwargs)
        except HostSigbus as exc:
            return exc
        except (KvmError, HostSigsegv, VcpuExit) as exc:
            raise CaseFailed(f"expected SIGBUS, got {exc}") from None
        raise CaseFailed("expected SIGBUS, the access succeeded")

    def expect_sigsegv(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> HostSigsegv:
        try:
            fn(*args, **kwargs)
        except HostSigsegv as exc:
            return exc
        except (KvmError, HostSigbus, VcpuExit) as exc:
            raise CaseFailed(f"expected SIGSEGV, got {exc}") from None
        raise CaseFailed("expected SIGSEGV, the access succeeded")

    def expect_exit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> VcpuExit:
        try:
            fn(*args, **kwargs)
        except VcpuExit as exc:
            return exc
        except (KvmError, HostSigbus, HostSigsegv) as exc:
            raise CaseFailed(f"expected a KVM_RUN exit, got {exc}") from None
        raise CaseFailed("expected a KVM_RUN exit, the guest access succeeded")

    def expect_bytes(self, got: bytes, want: bytes, what: str) -> None:
        if got != want:
            raise CaseFailed(f"{what}: read {summarize_bytes(got)}, expected {summarize_bytes(want)}")

    # -- common setup -------------------------------------------------------------------------------------
    def vm(self, vm_type: int = 0) -> Proxy:
        try:
            vm: Proxy = self.system.create_vm(vm_type)
            return vm
        except KvmError as exc:
            self.skip(f"KVM_CREATE_VM type {vm_type} refused here ({exc.errname})")
            raise  # unreachable

    def gpa_base(self, size: int) -> int:
        """A GPA for a test memslot inside the backend's vCPU window (4 GiB like the selftests)."""
        lo, hi = self.system.guest_gpa_window()
        base = 1 << 32
        if base < lo or base + size > hi:
            base = (lo + (1 << 21) - 1) & ~((1 << 21) - 1)
        if base + size > hi:
            self.skip(f"the backend's vCPU GPA window [{lo:#x}, {hi:#x}) cannot hold {size:#x} bytes")
        return base
