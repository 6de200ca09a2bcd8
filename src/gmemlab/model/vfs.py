"""The generic checks a file operation passes before guest_memfd sees it (fs/open.c, mm/mmap.c; spec 2.4, 2.5).

``vfs_fallocate`` and the mmap syscall with ``do_mmap`` refuse some arguments for every file, in a fixed
order, before the file's own ``->fallocate`` / ``->mmap`` runs; guest_memfd's checks come after these
(:class:`gmemlab.model.gmem.GmemFile`). Both functions take the raw syscall arguments and return them as
the kernel reads them.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..backend import MAP_SHARED_VALIDATE, PROT_EXEC
from ..errors import KvmError
from ..uapi import (
    FALLOC_FL_COLLAPSE_RANGE,
    FALLOC_FL_INSERT_RANGE,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_UNSHARE_RANGE,
    FALLOC_FL_WRITE_ZEROES,
    FALLOC_FL_ZERO_RANGE,
    LOFF_MAX,
    PAGE_SHIFT,
    PAGE_SIZE,
    U64_MAX,
    page_aligned,
)
from .args import sint, u64

# vfs_fallocate(): the operation bits and their exclusivity (fs/open.c).
FALLOC_FL_MODE_MASK = (
    FALLOC_FL_PUNCH_HOLE
    | FALLOC_FL_COLLAPSE_RANGE
    | FALLOC_FL_ZERO_RANGE
    | FALLOC_FL_INSERT_RANGE
    | FALLOC_FL_UNSHARE_RANGE
    | FALLOC_FL_WRITE_ZEROES
)
_OPERATIONS = (0, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_ZERO_RANGE, FALLOC_FL_INSERT_RANGE,
               FALLOC_FL_UNSHARE_RANGE, FALLOC_FL_WRITE_ZEROES)
_NO_KEEP_SIZE = (FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_WRITE_ZEROES)


def vfs_fallocate(op: str, mode: object, offset: object, length: object) -> tuple[int, int, int]:
    """``vfs_fallocate()``'s checks; returns ``(mode, offset, len)`` as the file's ``->fallocate`` gets them."""
    mode = sint(mode, "mode", op, "int") & 0xFFFFFFFF
    offset = sint(offset, "offset", op)
    length = sint(length, "len", op)
    if offset < 0 or length <= 0:
        raise KvmError(errno.EINVAL, op, f"offset {offset} must be >= 0 and len {length} > 0")
    if mode & ~(FALLOC_FL_MODE_MASK | FALLOC_FL_KEEP_SIZE):
        raise KvmError(errno.EOPNOTSUPP, op, f"mode {mode:#x} has bits outside the known modes")
    operation = mode & FALLOC_FL_MODE_MASK
    if operation == FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
        raise KvmError(errno.EOPNOTSUPP, op, "PUNCH_HOLE requires KEEP_SIZE")
    if operation in _NO_KEEP_SIZE and mode & FALLOC_FL_KEEP_SIZE:
        raise KvmError(errno.EOPNOTSUPP, op, f"mode {mode:#x} cannot be combined with KEEP_SIZE")
    if operation not in _OPERATIONS:
        raise KvmError(errno.EOPNOTSUPP, op, f"mode {mode:#x} combines exclusive operations")
    if offset + length > LOFF_MAX:
        raise KvmError(errno.EFBIG, op, f"offset + len = {offset + length:#x} overflows loff_t")
    return mode, offset, length


MAP_POPULATE, MAP_NONBLOCK = 0x8000, 0x10000


@dataclass(frozen=True)
class MmapArgs:
    """The mmap syscall's arguments after ``do_mmap()``'s generic checks."""

    length: int
    offset: int
    prot: int
    sharing: int  # flags & MAP_SHARED_VALIDATE: MAP_SHARED, MAP_PRIVATE or MAP_SHARED_VALIDATE
    populate: bool = False  # MAP_POPULATE without MAP_NONBLOCK: do_mmap() then calls mm_populate()


def do_mmap(op: str, length: object, offset: object, prot: object, flags: object) -> MmapArgs:
    """The mmap syscall and ``do_mmap()`` (mm/mmap.c), in order: offset alignment, length, ``file_mmap_ok()``
    (offset + length within MAX_LFS_FILESIZE), mapping type, noexec mount."""
    length = sint(length, "length", op, "size_t")
    offset = u64(offset, "offset", op, "off_t")
    prot = sint(prot, "prot", op, "int")
    flags = sint(flags, "flags", op, "int")
    if not page_aligned(offset):
        raise KvmError(errno.EINVAL, op, f"offset {offset:#x} is not page aligned")
    if length == 0:
        raise KvmError(errno.EINVAL, op, "length 0")
    npages = ((length & U64_MAX) + PAGE_SIZE - 1) >> PAGE_SHIFT
    if length < 0 or npages >= 1 << 52:
        raise KvmError(errno.ENOMEM, op, f"length {length:#x} does not fit the address space")
    aligned_len = npages << PAGE_SHIFT
    if aligned_len > LOFF_MAX or offset >> PAGE_SHIFT > (LOFF_MAX - aligned_len) >> PAGE_SHIFT:
        raise KvmError(errno.EOVERFLOW, op, f"offset {offset:#x} + length {length:#x} exceeds MAX_LFS_FILESIZE")
    sharing = flags & MAP_SHARED_VALIDATE  # the low bits the mapping type lives in
    if sharing == 0:
        raise KvmError(errno.EINVAL, op, "flags must contain MAP_SHARED or MAP_PRIVATE")
    if prot & PROT_EXEC:
        raise KvmError(errno.EPERM, op, "the guest_memfd mount is noexec (PROT_EXEC refused)")
    return MmapArgs(length, offset, prot, sharing, flags & (MAP_POPULATE | MAP_NONBLOCK) == MAP_POPULATE)
