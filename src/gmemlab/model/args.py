"""Argument intake: what the kernel would see of a Python value passed to a uAPI call.

ioctl and syscall arguments are fixed-width C integers, so a negative Python int reaches the kernel as its
two's complement (``-4096`` is ``2**64 - 4096``, which the kernel then reads back as a negative ``loff_t``).
A value the C type cannot hold (``2**64`` as a ``__u64``, ``2**40`` as a ``__u32`` slot) or that is not an
integer cannot be encoded at all: :func:`gmemlab.uapi.c_value` refuses it with
:class:`~gmemlab.errors.UnrepresentableArgument` naming the argument, exactly as the kernel client does, and
nothing changes.
"""

from __future__ import annotations

from ..errors import UnrepresentableArgument
from ..uapi import CTYPE_BITS, c_signed, c_value

U64_MASK = (1 << 64) - 1


def u64(value: object, name: str, op: str, ctype: str = "__u64") -> int:
    """``value`` as the u64 the kernel receives."""
    if type(value) is int and 0 <= value <= U64_MASK and CTYPE_BITS[ctype] == 64:  # already its bit pattern
        return value
    return c_value(value, ctype, name, op)


def u32(value: object, name: str, op: str, ctype: str = "__u32") -> int:
    return c_value(value, ctype, name, op)


def sint(value: object, name: str, op: str, ctype: str = "loff_t") -> int:
    """A signed syscall argument (``loff_t``, ``size_t`` lengths checked for sign by the VFS)."""
    return c_signed(value, ctype, name, op)


def as_bytes(value: object, op: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise UnrepresentableArgument(op, "data", value, "bytes")
    return bytes(value)
