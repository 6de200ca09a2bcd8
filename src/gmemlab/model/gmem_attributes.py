"""In-place conversion: ``KVM_SET_MEMORY_ATTRIBUTES2`` on a guest_memfd (linux-7.md 1.2-1.3, series v13).

``kvm_gmem_ioctl`` is the guest_memfd file's ``unlocked_ioctl``; :func:`kvm_gmem_set_attributes` runs the ten
steps of ``kvm_gmem_set_attributes()`` in the kernel's order:

1. copy from user fails: EFAULT;
2. ``flags != 0``: EINVAL;
3. any ``reserved[i] != 0``: EINVAL;
4. the VM has no private memory (``!kvm_arch_has_private_mem``): EINVAL;
5. attributes other than PRIVATE: EINVAL;
6. ``size == 0`` or ``offset + size`` wraps: EINVAL;
7. offset or size not page aligned: EINVAL;
8. ``offset >= i_size`` or ``offset + size > i_size``: EINVAL;
9. under ``invalidate_lock`` exclusive (:func:`convert_range`): the no-op return (no unmap, no invalidation);
   maple-tree preallocation (ENOMEM with ``error_offset = offset``; a fault-injection switch on the model);
   to private, host mappings are unmapped *first*, then every folio is checked (DMA-pinned, still mapped, or
   extra references after one LRU drain: EAGAIN with the first offending folio's offset); invalidation of
   guest mappings with the SHARED (to private) or PRIVATE (to shared) filter; ``make_shared`` per folio (to
   shared); store; end of the invalidation;
10. on an error the struct is copied back (EFAULT if that fails), so ``error_offset`` reaches userspace; the
    recorded v8 kernel copies back only for step-9 errors (realkernel-private.md finding 2).

Every error is EINVAL up to step 8, so only the model can say which step refused a call: its reason names it
(``step 4: ...``).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ..errors import ConversionError, KvmError
from ..uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_SET_MEMORY_ATTRIBUTES2, PAGE_SHIFT, U64_MAX, VmType, page_aligned
from .config import HostConfig
from .locking import RwSem
from .metrics import Metrics
from .pagecache import PageCache
from .profiles import Behaviour
from .shareability import Shareability

OP = "KVM_SET_MEMORY_ATTRIBUTES2"
_LAYOUT = struct.Struct("<16Q")  # offset, size, attributes, flags, error_offset, reserved[11]


@dataclass(frozen=True)
class Attributes2:
    """``struct kvm_memory_attributes2`` (128 bytes, linux-7.md 1.1)."""

    offset: int
    size: int
    attributes: int
    flags: int = 0
    error_offset: int = 0
    reserved: tuple[int, ...] = (0,) * 11

    @classmethod
    def from_bytes(cls, data: bytes) -> Attributes2:
        f = _LAYOUT.unpack(data[: _LAYOUT.size].ljust(_LAYOUT.size, b"\0"))
        return cls(f[0], f[1], f[2], f[3], f[4], tuple(f[5:]))

    def to_bytes(self) -> bytes:
        reserved = (tuple(self.reserved) + (0,) * 11)[:11]
        return _LAYOUT.pack(self.offset, self.size, self.attributes, self.flags, self.error_offset, *reserved)


@dataclass
class FaultInjection:
    """Model-only failure switches (the kernel's failslab/fail_page_alloc, targeted): each counts down."""

    mtree_preallocate: int = 0  # the next N maple-tree preallocations fail (ENOMEM)

    def fail(self, site: str) -> bool:
        left = getattr(self, site)
        if left > 0:
            setattr(self, site, left - 1)
            return True
        return False


class GmemInode(Protocol):
    """What the conversion needs of the inode (:class:`gmemlab.model.gmem.GmemInode`)."""

    behaviour: Behaviour
    config: HostConfig
    size: int
    shareability: Shareability
    invalidate_lock: RwSem
    fault_injection: FaultInjection
    metrics: Metrics
    pagecache: PageCache

    def unmap_host(self, start: int, end: int) -> int: ...

    def first_unsafe_folio(self, start: int, end: int) -> tuple[int, str] | None: ...

    def kvm_gmem_invalidate_begin(self, start: int, end: int, private: bool | None = None) -> int: ...

    def arch_hook(self, name: str | None, n: int = 1) -> None: ...


class _Kvm(Protocol):
    @property
    def vm_type(self) -> VmType: ...


class GmemFile(Protocol):
    """What the ioctl needs of the file: its inode and the VM that created it."""

    @property
    def inode(self) -> GmemInode: ...

    @property
    def vm(self) -> _Kvm: ...


class _Refused(Exception):
    """A step refused the call: errno, the step number, the reason and the error_offset to report."""

    def __init__(self, err: int, step: int, reason: str, error_offset: int | None = None) -> None:
        super().__init__(reason)
        self.errno = err
        self.step = step
        self.reason = reason
        self.error_offset = error_offset


def kvm_gmem_ioctl(
    file: GmemFile,
    number: int,
    copy_in: Callable[[int], bytes | None],
    copy_out: Callable[[bytes], bool],
) -> Attributes2:
    """The guest_memfd ``unlocked_ioctl``: ENOTTY unless in-place conversion is on and ``number`` is
    ``KVM_SET_MEMORY_ATTRIBUTES2`` (checked before the argument is read: realkernel-private.md B0
    ``3/attrs2_bad_pointer``); returns the struct as the caller sees it after the call."""
    behaviour, config = file.inode.behaviour, file.inode.config
    if not behaviour.api.has_attributes2 or not behaviour.in_place_conversion(config):
        raise KvmError(errno.ENOTTY, "ioctl", f"{number:#x} on a guest_memfd: no ioctls without in-place conversion")
    if number != KVM_SET_MEMORY_ATTRIBUTES2:
        raise KvmError(errno.ENOTTY, "ioctl", f"{number:#x} is not KVM_SET_MEMORY_ATTRIBUTES2 ({OP:s} is "
                       f"{KVM_SET_MEMORY_ATTRIBUTES2:#x})")
    raw = copy_in(_LAYOUT.size)
    if raw is None:
        raise KvmError(errno.EFAULT, OP, "step 1: copy_from_user of the 128-byte struct faulted")
    arg = Attributes2.from_bytes(raw)
    try:
        out = kvm_gmem_set_attributes(file, arg)
    except _Refused as exc:
        seen = arg
        copy_back = behaviour.attributes2_copy_back_on_any_error or exc.step == 9
        if copy_back:
            kernel = arg if exc.error_offset is None else replace(arg, error_offset=exc.error_offset)
            if not copy_out(kernel.to_bytes()):
                raise KvmError(errno.EFAULT, OP, f"step 10: copying the struct back faulted after {exc.reason}") \
                    from None
            seen = kernel
        raise ConversionError(exc.errno, OP, f"step {exc.step}: {exc.reason}", error_offset=seen.error_offset) \
            from None
    return out


def kvm_gmem_set_attributes(file: GmemFile, arg: Attributes2) -> Attributes2:
    """Steps 2-9 on a copied-in struct; raises :class:`_Refused`. Returns the struct (untouched on success)."""
    inode = file.inode
    if arg.flags:
        raise _Refused(errno.EINVAL, 2, f"flags {arg.flags:#x} must be 0")
    bad = [i for i, v in enumerate(arg.reserved) if v]
    if bad:
        raise _Refused(errno.EINVAL, 3, f"reserved[{bad[0]}] = {arg.reserved[bad[0]]:#x} must be 0")
    if not file.vm.vm_type.has_private_mem:
        raise _Refused(errno.EINVAL, 4, f"a {file.vm.vm_type.label} VM has no private memory")
    if arg.attributes & ~KVM_MEMORY_ATTRIBUTE_PRIVATE:
        raise _Refused(errno.EINVAL, 5, f"attributes {arg.attributes:#x}: only PRIVATE "
                       f"({KVM_MEMORY_ATTRIBUTE_PRIVATE:#x}) exists")
    if arg.size == 0 or arg.offset + arg.size > U64_MAX:
        raise _Refused(errno.EINVAL, 6, f"size {arg.size:#x} is 0 or offset {arg.offset:#x} + size wraps")
    if not page_aligned(arg.offset) or not page_aligned(arg.size):
        raise _Refused(errno.EINVAL, 7, f"offset {arg.offset:#x} / size {arg.size:#x} not page aligned")
    if arg.offset >= inode.size or arg.offset + arg.size > inode.size:
        raise _Refused(errno.EINVAL, 8, f"[{arg.offset:#x}, +{arg.size:#x}) is not inside i_size {inode.size:#x}")
    start, end = arg.offset >> PAGE_SHIFT, (arg.offset + arg.size) >> PAGE_SHIFT
    convert_range(inode, start, end, bool(arg.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE), arg.offset)
    return arg


def convert_range(inode: GmemInode, start: int, end: int, private: bool, offset: int) -> None:
    """Step 9 on file indices ``[start, end)`` (``offset`` = the byte offset asked for, for error_offset)."""
    with inode.invalidate_lock.write("kvm_gmem_set_attributes"):
        metrics = inode.metrics
        if (not inode.shareability.any_shared(start, end)) if private else inode.shareability.all_shared(start, end):
            metrics.add("conversion_noop")
            return  # nothing to do: no unmap, no invalidation
        if inode.fault_injection.fail("mtree_preallocate"):
            metrics.add("conversion_enomem")
            raise _Refused(errno.ENOMEM, 9, "maple-tree preallocation failed (fault injection)", offset)
        if private:
            inode.unmap_host(start, end)  # PTEs are gone even when EAGAIN follows
            bad = inode.first_unsafe_folio(start, end)
            if bad is not None:
                index, why = bad
                metrics.add("conversion_eagain")
                raise _Refused(errno.EAGAIN, 9, f"folio at index {index:#x} is {why}",
                               max(index << PAGE_SHIFT, offset))
        # to private: shared guest mappings go; to shared: private ones (linux-7.md 1.2 step 9)
        inode.kvm_gmem_invalidate_begin(start, end, private=not private)
        if not private:
            inode.arch_hook("make_shared", inode.pagecache.count_allocated(start, end))
        inode.shareability.store(start, end, not private)
        metrics.add("conversions_ok")
