"""Ownership of everything the kernel backend creates, so ``close()`` leaves nothing behind.

Every fd, mapping, VM and vCPU registers itself with the backend's :class:`Resources` when created and
unregisters when closed by its owner. ``Resources.close_all()`` closes what is left in reverse creation
order (vCPUs before VMs, mappings before the files they map), which is what ``Backend.close()`` and the
context manager run.
"""

from __future__ import annotations

from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...


class Resources:
    def __init__(self) -> None:
        self._items: dict[int, Closable] = {}

    def add(self, item: Closable) -> None:
        self._items[id(item)] = item

    def discard(self, item: object) -> None:
        self._items.pop(id(item), None)

    def __len__(self) -> int:
        return len(self._items)

    def close_all(self) -> list[BaseException]:
        """Close everything still open, newest first; returns the errors (closing goes on regardless)."""
        errors: list[BaseException] = []
        while self._items:
            _, item = self._items.popitem()
            try:
                item.close()
            except Exception as exc:  # keep closing the rest
                errors.append(exc)
        return errors
