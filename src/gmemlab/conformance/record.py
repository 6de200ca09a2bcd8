"""Observations: every backend call a case makes, with its outcome, in a backend-neutral form.

A case talks to the backend through :class:`Proxy` objects. Each call is logged as an
:class:`Observation` (object, method, arguments, outcome) with everything that legitimately differs
between the model and the kernel replaced by a symbol: fd numbers and mapping addresses become names
(``gmem1``, ``map2+0x1000``), byte strings become a short summary. Two backends agree on a case when
their observation lists are equal; the first unequal pair is a divergence.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import (
    HostSigbus,
    HostSigsegv,
    KvmError,
    OutsideReservation,
    UnrepresentableArgument,
    UnsupportedByBackend,
    VcpuExit,
)
from ..uapi import KVM_EXIT_MMIO


def summarize_bytes(data: bytes) -> str:
    if not data:
        return "b''"
    if data.count(data[:1]) == len(data):
        return f"{len(data)}x{data[0]:#04x}"
    if len(data) <= 16:
        return data.hex()
    return f"{len(data)}B:sha1={hashlib.sha1(data).hexdigest()[:12]}"


def outcome_of_exception(exc: BaseException) -> tuple[Any, ...] | None:
    """The neutral form of an exception a backend call may raise, or None for anything else."""
    if isinstance(exc, KvmError):
        offset = getattr(exc, "error_offset", None)
        return ("errno", exc.errname) if offset is None else ("errno", exc.errname, offset)
    if isinstance(exc, OutsideReservation):
        return ("refused", "outside the reservation")
    if isinstance(exc, UnrepresentableArgument):
        return ("refused", f"{exc.name} not {exc.ctype}")
    if isinstance(exc, HostSigbus):
        return ("SIGBUS", exc.offset & ~0xFFF, exc.write)
    if isinstance(exc, HostSigsegv):
        return ("SIGSEGV", exc.write)
    if isinstance(exc, VcpuExit):
        if exc.exit_reason == KVM_EXIT_MMIO:
            # The width and exact byte of an emulated MMIO access depend on the guest's instructions.
            return ("exit", "MMIO", exc.gpa & ~0x7, exc.is_write)
        return ("exit", exc.exit_reason, exc.errno, exc.gpa, exc.size, exc.flags)
    return None


@dataclass(frozen=True)
class Observation:
    target: str
    method: str
    args: tuple[Any, ...]
    outcome: tuple[Any, ...]

    def __str__(self) -> str:
        args = ", ".join(str(a) for a in self.args)
        return f"{self.target}.{self.method}({args}) -> {' '.join(str(o) for o in self.outcome)}"


class Recorder:
    """Wraps backend objects in proxies and logs their calls."""

    def __init__(self) -> None:
        self.log: list[Observation] = []
        self._counts: Counter[str] = Counter()
        self._fd_names: dict[int, str] = {}
        self._maps: list[tuple[int, int, str]] = []

    def wrap(self, obj: Any, kind: str) -> Proxy:
        self._counts[kind] += 1
        name = f"{kind}{self._counts[kind]}"
        fd = getattr(obj, "fd", None)
        if isinstance(fd, int):
            self._fd_names[fd] = name
        address = getattr(obj, "address", None)
        if isinstance(address, int) and isinstance(getattr(obj, "length", None), int):
            self._maps.append((address, obj.length, name))
        return Proxy(obj, self, name)

    # -- normalisation ----------------------------------------------------------------------------------
    def symbol(self, value: Any, key: str = "") -> Any:
        if isinstance(value, Proxy):
            return value._name
        if isinstance(value, bytes | bytearray):
            return summarize_bytes(bytes(value))
        if isinstance(value, tuple | list):
            return tuple(self.symbol(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, int):
            return value if isinstance(value, str | float | type(None) | bool) else type(value).__name__
        if key == "guest_memfd":
            return f"fd({self._fd_names[value]})" if value in self._fd_names else ("badfd" if value < 0 else value)
        for address, length, name in reversed(self._maps):  # newest first: addresses get reused
            if address <= value < address + length:
                return f"{name}+{value - address:#x}"
        return value

    def unwrap(self, value: Any) -> Any:
        return value._obj if isinstance(value, Proxy) else value

    # -- calls ------------------------------------------------------------------------------------------
    def call(self, proxy: Proxy, method: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        shown = tuple(self.symbol(a) for a in args) + tuple(
            f"{k}={self.symbol(v, k)}" for k, v in sorted(kwargs.items())
        )
        try:
            result = fn(*(self.unwrap(a) for a in args), **{k: self.unwrap(v) for k, v in kwargs.items()})
        except UnsupportedByBackend:
            raise
        except Exception as exc:
            outcome = outcome_of_exception(exc)
            if outcome is None:
                raise
            self.log.append(Observation(proxy._name, method, shown, outcome))
            raise
        if method == "munmap":
            self._maps = [entry for entry in self._maps if entry[2] != proxy._name]
        result, shown_result = self._wrap_result(method, result)
        self.log.append(Observation(proxy._name, method, shown, ("ok", shown_result)))
        return result

    _KINDS: ClassVar[dict[str, str]] = {
        "create_vm": "vm",
        "create_guest_memfd": "gmem",
        "dup": "gmem",
        "mmap": "map",
        "mmap_anonymous": "anon",
        "memfd_create": "memfd",
        "create_vcpu": "vcpu",
        "pin": "pin",
        "vmsplice": "pipe",
        "fork": "child",
        "mapping": "cmap",
    }

    def _wrap_result(self, method: str, result: Any) -> tuple[Any, Any]:
        kind = self._KINDS.get(method)
        if kind is not None and result is not None:
            proxy = self.wrap(result, kind)
            return proxy, proxy._name
        if method == "fstat":
            return result, (result.st_size, result.st_blksize, result.st_blocks)
        if isinstance(result, list):
            return result, tuple(self.symbol(v) for v in result)
        return result, self.symbol(result)


class Proxy:
    """Forwards attribute access to a backend object; method calls are recorded."""

    __slots__ = ("_name", "_obj", "_rec")

    def __init__(self, obj: Any, rec: Recorder, name: str) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._obj, attr)
        if callable(value) and not isinstance(value, type):
            rec, proxy = self._rec, self
            return lambda *args, **kwargs: rec.call(proxy, attr, value, args, kwargs)
        return value

    def __repr__(self) -> str:
        return f"<{self._name}>"
