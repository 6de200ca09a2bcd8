"""The modelled process's file descriptor table (``struct fdtable``, fs/file.c).

``alloc_fd`` hands out the lowest free number, which is what makes fd numbers in a model run match the
kernel's (0-2 are stdin/stdout/stderr).
"""

from __future__ import annotations

from bisect import insort
from typing import Protocol


class OpenFile(Protocol):
    """Anything an fd can name: closing the fd is its ``close()``."""

    def close(self) -> None: ...


class FdTable:
    """File descriptors of the modelled process: the lowest free number, like the kernel hands out."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._next = 3
        self.files: dict[int, OpenFile] = {}

    def install(self, obj: OpenFile) -> int:
        fd = self._free.pop(0) if self._free else self._alloc()
        self.files[fd] = obj
        return fd

    def _alloc(self) -> int:
        fd = self._next
        self._next += 1
        return fd

    def remove(self, fd: int) -> None:
        del self.files[fd]
        insort(self._free, fd)

    def get(self, fd: int) -> OpenFile | None:
        return self.files.get(fd)
