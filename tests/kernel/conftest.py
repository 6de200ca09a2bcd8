"""Fixtures for the real-kernel backend tests: skip everything, with the reason, without a usable /dev/kvm."""

from __future__ import annotations

import pytest

from gmemlab.errors import UnsupportedByBackend
from gmemlab.kernel import KernelBackend, open_kernel_backend

MIB = 1 << 20
GMEM_GPA = 2 * MIB  # first GPA of the backend's window


def _probe() -> str | None:
    try:
        open_kernel_backend().close()
    except UnsupportedByBackend as exc:
        return str(exc)
    return None


_REASON = _probe()
if _REASON:
    print(f"tests/kernel: skipped: {_REASON}")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if _REASON:
                item.add_marker(pytest.mark.skip(reason=f"/dev/kvm unusable: {_REASON}"))


@pytest.fixture(scope="session")
def facts():
    """What the kernel under test says about itself (capabilities, VM types, release, module params)."""
    from gmemlab.hostfacts import HostFacts

    b = open_kernel_backend()
    try:
        return HostFacts.probe(b)
    finally:
        b.close()


@pytest.fixture
def kb():
    """A fresh kernel backend, closed (with everything it created) after the test."""
    b = open_kernel_backend()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def vm(kb: KernelBackend):
    return kb.create_vm()
