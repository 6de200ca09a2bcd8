"""Model-vs-kernel tests: skipped, with the reason printed, when /dev/kvm is not usable here."""

from __future__ import annotations

import pytest

from gmemlab.errors import UnsupportedByBackend


def _probe() -> str | None:
    try:
        from gmemlab.kernel import open_kernel_backend

        open_kernel_backend().close()
    except UnsupportedByBackend as exc:
        return exc.what
    return None


REASON = _probe()
if REASON:
    print(f"tests/differential: skipped: /dev/kvm unusable: {REASON}")


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    for item in items:
        if "tests/differential" in str(item.fspath) and REASON:
            item.add_marker(pytest.mark.skip(reason=f"/dev/kvm unusable: {REASON}"))
