"""Argument intake: what the kernel would see of a Python value passed to a uAPI call.

ioctl arguments are fixed-width integers, so a negative Python int reaches the kernel as its two's
complement (``-4096`` is ``2**64 - 4096``, which the kernel then reads back as a negative ``loff_t``).
A value that is not an integer cannot be encoded at all: it is refused up front with EINVAL naming the
argument, and nothing changes.
"""

from __future__ import annotations

import errno

from ..errors import KvmError

U64_MASK = (1 << 64) - 1


def u64(value: object, name: str, op: str) -> int:
    """``value`` as the u64 the kernel receives; EINVAL if it is not an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise KvmError(errno.EINVAL, op, f"{name} must be an integer, got {type(value).__name__} {value!r}")
    return value & U64_MASK


def u32(value: object, name: str, op: str) -> int:
    return u64(value, name, op) & 0xFFFFFFFF


def sint(value: object, name: str, op: str) -> int:
    """A signed syscall argument (``loff_t``, ``size_t`` lengths checked for sign by the VFS)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise KvmError(errno.EINVAL, op, f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value &= U64_MASK
    return value - (1 << 64) if value >> 63 else value


def as_bytes(value: object, op: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise KvmError(errno.EINVAL, op, f"data must be bytes, got {type(value).__name__}")
    return bytes(value)
