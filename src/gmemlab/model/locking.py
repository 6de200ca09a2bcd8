"""The sleeping locks the model's paths take, as the kernel takes them (spec 2.13, linux-7.md 1.3).

The model is sequential, so a lock can never be contended: a path that asks for a lock another path of the
same call chain holds incompatibly is a re-entrancy bug in the model (in the kernel it would deadlock), and
:class:`RwSem` raises ``AssertionError`` for it. Interleavings of the real paths are the race checker's job
(:mod:`gmemlab.races`); what this records is *which* lock each modelled kernel function holds, e.g.
``kvm_gmem_get_pfn`` under ``invalidate_lock`` shared and ``kvm_gmem_set_attributes`` under it exclusive.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class RwSem:
    """``struct rw_semaphore`` (``mapping->invalidate_lock``): readers or one writer; counts acquisitions."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.readers: list[str] = []
        self.writer: str | None = None
        self.acquired = {"read": 0, "write": 0}

    @contextmanager
    def read(self, holder: str) -> Iterator[None]:
        """``down_read`` ... ``up_read`` around the body, by ``holder`` (a kernel function name)."""
        if self.writer is not None:
            raise AssertionError(f"{holder}: {self.name} taken shared while {self.writer} holds it exclusive")
        self.readers.append(holder)
        self.acquired["read"] += 1
        try:
            yield
        finally:
            self.readers.remove(holder)

    @contextmanager
    def write(self, holder: str) -> Iterator[None]:
        """``down_write`` ... ``up_write`` around the body."""
        if self.writer is not None or self.readers:
            other = self.writer or ", ".join(self.readers)
            raise AssertionError(f"{holder}: {self.name} taken exclusive while {other} holds it")
        self.writer = holder
        self.acquired["write"] += 1
        try:
            yield
        finally:
            self.writer = None

    def held_by(self, holder: str) -> str | None:
        """``"read"``/``"write"`` if ``holder`` holds the lock now, else None (for assertions in tests)."""
        if self.writer == holder:
            return "write"
        return "read" if holder in self.readers else None
