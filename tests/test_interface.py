"""Every backend implements every method of the interfaces in gmemlab.backend, with the same signature.

The type checker checks the same thing structurally (the CLI's backend factories are typed as returning
:class:`gmemlab.backend.Backend`); this test also catches a parameter renamed or a default changed, which
a structural check lets through, and it runs without the type checker.
"""

from __future__ import annotations

import inspect
import re
from typing import Protocol

import pytest

from gmemlab import backend as iface
from gmemlab.kernel.gmem import KernelGuestMemfd
from gmemlab.kernel.mapping import KernelHostMapping, PipeRefs
from gmemlab.kernel.process import KernelProcess
from gmemlab.kernel.system import KernelBackend, KernelMemfd
from gmemlab.kernel.vcpu import KernelVcpu
from gmemlab.kernel.vm import KernelVm
from gmemlab.model.gmem import GmemFile
from gmemlab.model.host import ModelHostMapping, ModelPin
from gmemlab.model.kvm_main import ModelBackend, ModelVcpu, ModelVm
from gmemlab.model.memfd import ModelMemfd
from gmemlab.model.process import ModelProcess

PROTOCOLS = [iface.Backend, iface.Vm, iface.Vcpu, iface.GuestMemfd, iface.HostMapping, iface.LongTermPin,
             iface.HasFd, iface.Process, iface.PageReferences]

IMPLEMENTATIONS = {
    "model": {
        iface.Backend: ModelBackend,
        iface.Vm: ModelVm,
        iface.Vcpu: ModelVcpu,
        iface.GuestMemfd: GmemFile,
        iface.HostMapping: ModelHostMapping,
        iface.LongTermPin: ModelPin,
        iface.HasFd: ModelMemfd,
        iface.Process: ModelProcess,
        iface.PageReferences: ModelPin,
    },
    "kernel": {
        iface.Backend: KernelBackend,
        iface.Vm: KernelVm,
        iface.Vcpu: KernelVcpu,
        iface.GuestMemfd: KernelGuestMemfd,
        iface.HostMapping: KernelHostMapping,
        iface.HasFd: KernelMemfd,
        iface.Process: KernelProcess,
        iface.PageReferences: PipeRefs,
        # No LongTermPin: the kernel backend cannot pin (HostMapping.pin raises UnsupportedByBackend).
    },
}


def methods(proto: type) -> dict[str, inspect.Signature]:
    """The methods a Protocol declares (its own and its Protocol bases'), with their signatures."""
    out = {}
    for klass in reversed(proto.__mro__):
        if klass is object or not getattr(klass, "_is_protocol", False):
            continue
        for name, value in vars(klass).items():
            if inspect.isfunction(value) and (not name.startswith("_") or name in ("__enter__", "__exit__")):
                out[name] = inspect.signature(value)
    return out


def attributes(proto: type) -> set[str]:
    """The data members a Protocol declares (``fd: int``, read-only properties)."""
    out: set[str] = set()
    for klass in proto.__mro__:
        if getattr(klass, "_is_protocol", False) and klass is not Protocol:
            out |= set(vars(klass).get("__annotations__", {}))
            out |= {name for name, value in vars(klass).items() if isinstance(value, property)}
    return out


def has_attribute(impl: type, name: str) -> bool:
    """Set on the class or a base, declared there, or assigned in a method (``self.fd = ...``)."""
    for klass in impl.__mro__[:-1]:
        if name in vars(klass) or name in vars(klass).get("__annotations__", {}):
            return True
        if re.search(rf"\bself\.{name}\s*(:[^=]*)?=", inspect.getsource(klass)):
            return True
    return False


def parameters(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    """What a caller relies on: names, kinds and defaults (annotations are the type checker's business)."""
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


CASES = [(side, proto, impl) for side, impls in IMPLEMENTATIONS.items() for proto, impl in impls.items()]


@pytest.mark.parametrize(("side", "proto", "impl"), CASES, ids=[f"{s}-{p.__name__}" for s, p, _ in CASES])
def test_backend_implements_interface(side: str, proto: type, impl: type) -> None:
    declared = methods(proto)
    assert declared or attributes(proto), f"{proto.__name__} declares nothing?"
    absent = sorted(name for name in attributes(proto) if not has_attribute(impl, name))
    assert not absent, f"{impl.__name__} ({side}) lacks {proto.__name__} attributes {absent}"
    missing = sorted(name for name in declared if not callable(getattr(impl, name, None)))
    assert not missing, f"{impl.__name__} ({side}) lacks {proto.__name__} methods {missing}"
    differ = {
        name: (str(sig), str(inspect.signature(getattr(impl, name))))
        for name, sig in declared.items()
        if parameters(sig) != parameters(inspect.signature(getattr(impl, name)))
    }
    assert not differ, f"{impl.__name__} ({side}) signatures differ from {proto.__name__}: {differ}"


def test_every_protocol_is_covered() -> None:
    declared = {obj for obj in vars(iface).values()
                if isinstance(obj, type) and getattr(obj, "_is_protocol", False) and obj is not Protocol}
    assert declared == set(PROTOCOLS)
    for side, impls in IMPLEMENTATIONS.items():
        assert set(impls) <= declared, side


def test_check_finds_a_seeded_mismatch() -> None:
    """The comparison can fail: a renamed parameter and a changed default are both caught."""

    class Renamed:
        def unpin(self, now: bool = True) -> None: ...

    class Defaulted:
        def read(self, offset: int, length: int = 1) -> bytes: ...

    assert parameters(methods(iface.LongTermPin)["unpin"]) != parameters(inspect.signature(Renamed.unpin))
    assert parameters(methods(iface.HostMapping)["read"]) != parameters(inspect.signature(Defaulted.read))
    assert not has_attribute(Renamed, "fd") and has_attribute(ModelMemfd, "fd")
