"""The modelled process's file descriptor table (``struct fdtable``, fs/file.c).

``alloc_fd`` hands out the lowest free number, which is what makes fd numbers in a model run match the
kernel's (0-2 are stdin/stdout/stderr).
"""

from __future__ import annotations

from bisect import insort


class FdTable:
    """File descriptors of the modelled process: the lowest free number, like the kernel hands out."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._next = 3
        self.files: dict[int, object] = {}

    def install(self, obj: object) -> int:
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

    def get(self, fd: int) -> object | None:
        return self.files.get(fd)
