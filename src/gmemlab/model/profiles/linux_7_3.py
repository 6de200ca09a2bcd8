"""``linux-7.3``: what merged Linux 6.19 to 7.3 changed for guest_memfd, relative to ``linux-6.18``.

From linux-7.md section 0 (and guest_memfd.md U6.19, U7.0, U7.2):

* 6.19: NUMA mempolicy on gmem mappings (the inode's shared policy); own pseudo filesystem and inodes
  (``struct gmem_inode``, ``struct gmem_file``; nothing the uAPI of the model can observe);
* 7.0: populate rework (no "prepared" tracking, so no EEXIST; the source must be 4 KiB aligned; the arch
  prepare hook runs on every ``kvm_gmem_get_pfn``);
* 7.2: a binding overlapping another slot's file range is EEXIST; the binding offset is unsigned;
* 7.3: fixes to the per-VM attribute xarray only (memcg accounting, reserved entries): no observable change.

Not a change here: ``MADV_COLLAPSE`` on a gmem mapping is EINVAL in this model's ``linux-6.18`` already,
because the recorded 6.18.2 kernel refuses it too (realkernel-private.md ``6/default_vm/madv_collapse``),
although linux-7.md dates the fix to 7.0.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import ClassVar

from ..config import HostConfig
from .base import ArchHooks, Change, PopulateRules
from .linux_6_18 import Linux618

HOOKS_7_0 = ArchHooks(prepare="arch_prepares", reclaim="arch_invalidate", make_shared=None, prepare_every_call=True,
                      prepare_private_only=False)


@dataclass(frozen=True)
class Linux73(Linux618):
    """Merged Linux 7.3 = 6.18 + the changes listed in ``CHANGES``."""

    CHANGES: ClassVar[tuple[Change, ...]] = (
        Change("mbind() on a gmem mapping sets the inode's shared policy; folios are allocated by it (6.19)",
               "linux-7.md 0 (6.19); spec 2.4", ("gmem_shared_policy",)),
        Change("populate: no 'prepared' tracking (no EEXIST), the source must be 4 KiB aligned (7.0)",
               "linux-7.md 0 (7.0); spec 2.9 U7.0", ("populate",)),
        Change("kvm_gmem_get_pfn calls the arch prepare hook on every call (7.0)", "spec 2.8 U7.0", ("hooks",)),
        Change("dropping KVM_MEM_GUEST_MEMFD from an existing memslot is EINVAL (upstream 9935df5333aa, 6.19; "
               "6.18.3 on the stable line, so a linux-6.18 model follows the kernel's release)", "spec 2.6",
               ("gmem_flag_toggle",)),
        Change("binding a file range another slot already binds fails with EEXIST, not EINVAL (7.2)",
               "linux-7.md 0 (7.2); spec 2.6, 5.1", ("bind_overlap_errno",)),
        Change("the binding offset is unsigned: offset + size past i_size is EINVAL even when it wraps (7.2)",
               "linux-7.md 0 (7.2); spec 5.2", ("bind_offset_signed",)),
        Change("fadvise64 with a negative offset is EINVAL (any file; measured on Debian 7.3.4, accepted by "
               "6.18.44; upstream commit not identified)", "measured: tests/differential in Debian 7.3.4",
               ("fadvise_rejects_negative_offset",)),
    )

    @property
    def gmem_shared_policy(self) -> bool:
        return True

    @property
    def populate(self) -> PopulateRules:
        return PopulateRules(eexist_if_prepared=False, source_page_aligned=True, null_source_in_place=False)

    @property
    def hooks(self) -> ArchHooks:
        return HOOKS_7_0

    def gmem_flag_toggle(self, config: HostConfig) -> bool:
        return False

    @property
    def bind_overlap_errno(self) -> int:
        return errno.EEXIST

    @property
    def bind_offset_signed(self) -> bool:
        return False

    @property
    def fadvise_rejects_negative_offset(self) -> bool:
        return True
