"""``linux-7.4-v8``: the recorded in-place kernel, relative to ``linux-7.4`` (v13).

realkernel-private.md column B is 7.1.5 with a hand port of the series' v8 (patches 01-25), not the v13 that
``linux-7.4`` follows. Where the recording disagrees with linux-7.md, this variant reproduces the recording:

* GMEM_ONLY follows the MMAP flag only (finding 5: a gmem without MMAP, made shared, is read by the guest
  from ``userspace_addr``, rows ``4d/*``; after the file is closed, the private GPA reads ``userspace_addr``,
  rows ``4e/*``); v13 also makes every slot GMEM_ONLY when conversion is on;
* the base is 7.1.5, so the 7.2 binding changes are absent: a file-range overlap is EINVAL (rows
  ``5/bind/overlap_*``) and the offset check is signed;
* the struct is copied back only for errors of step 9 (finding 2; the probe cannot tell this apart).

The parameter's default and the capability number (250) are the same unverified constants as ``linux-7.4``:
v8 is where they come from.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import ClassVar

from ..config import HostConfig
from .base import Change
from .linux_7_4 import Linux74


@dataclass(frozen=True)
class Linux74V8(Linux74):
    """In-place conversion v8 on 7.1.5 (realkernel-private.md column B)."""

    CHANGES: ClassVar[tuple[Change, ...]] = (
        Change("GMEM_ONLY only when the file has MMAP (not whenever conversion is on)",
               "realkernel-private.md finding 5; rows 4d/*, 4e/*, 5/gmem_only/swp_vm_noflags", ("gmem_only",)),
        Change("7.1.5 base: a file-range overlap at bind is EINVAL (7.2 made it EEXIST)",
               "realkernel-private.md finding 11; rows 5/bind/overlap_*", ("bind_overlap_errno",)),
        Change("7.1.5 base: the binding offset check is signed (7.2 made it unsigned)", "spec 5.2",
               ("bind_offset_signed",)),
        Change("KVM_SET_MEMORY_ATTRIBUTES2 copies the struct back only for step-9 errors",
               "realkernel-private.md finding 2", ("attributes2_copy_back_on_any_error",)),
    )

    def gmem_only(self, flags: int, config: HostConfig) -> bool:
        return self.supports_mmap(flags)

    @property
    def bind_overlap_errno(self) -> int:
        return errno.EINVAL

    @property
    def bind_offset_signed(self) -> bool:
        return True

    @property
    def attributes2_copy_back_on_any_error(self) -> bool:
        return False
