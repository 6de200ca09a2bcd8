"""Memslots: ``struct kvm_memory_slot`` and the checks of ``KVM_SET_USER_MEMORY_REGION[2]`` (spec 2.6).

After ``virt/kvm/kvm_main.c`` (6.18): the ioctl's arguments as the kernel reads them
(:class:`MemoryRegion`), ``check_memory_region_flags`` and the general sanity checks of
``__kvm_set_memory_region``, and the overlap check of a new or moved slot. Creating, moving and
deleting a slot change the VM and live with it (:mod:`gmemlab.model.kvm_main`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..errors import KvmError
from ..uapi import (
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    PAGE_SHIFT,
    U64_MAX,
    page_aligned,
)
from .args import u32, u64
from .gmem import GmemFile
from .host import USER_ADDR_LIMIT

KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1


@dataclass(eq=False)
class Memslot:
    """``struct kvm_memory_slot`` with its guest_memfd binding (spec 2.1, 2.6)."""

    id: int
    as_id: int
    base_gfn: int
    npages: int
    flags: int
    userspace_addr: int
    gmem_file: GmemFile | None = None  # no reference held: the slot does not pin the file
    gmem_pgoff: int = 0
    gmem_only: bool = False
    has_gmem: bool = False  # created with KVM_MEM_GUEST_MEMFD (even after the file is released)
    gmem_tracks_shareability: bool = False  # RFC v2: private-ness comes from the gmem (spec 2.7)

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages


@dataclass(frozen=True)
class MemoryRegion:
    """``struct kvm_userspace_memory_region2`` as the kernel receives it (fixed-width fields)."""

    slot_id: int
    as_id: int
    flags: int
    gpa: int
    size: int
    uaddr: int
    gmem_offset: int

    @classmethod
    def from_args(
        cls, op: str, slot: object, flags: object, gpa: object, size: object, uaddr: object, gmem_offset: object
    ) -> MemoryRegion:
        slot_arg = u32(slot, "slot", op)
        return cls(
            slot_id=slot_arg & 0xFFFF,
            as_id=slot_arg >> 16,
            flags=u32(flags, "flags", op),
            gpa=u64(gpa, "guest_phys_addr", op),
            size=u64(size, "memory_size", op),
            uaddr=u64(uaddr, "userspace_addr", op),
            gmem_offset=u64(gmem_offset, "guest_memfd_offset", op),
        )

    @property
    def key(self) -> tuple[int, int]:
        return self.as_id, self.slot_id

    @property
    def base_gfn(self) -> int:
        return self.gpa >> PAGE_SHIFT

    @property
    def npages(self) -> int:
        return self.size >> PAGE_SHIFT


def check_memory_region_flags(op: str, flags: int, readonly_allowed: bool) -> None:
    """``check_memory_region_flags()``: LOG_DIRTY_PAGES and GUEST_MEMFD, READONLY where the VM allows it."""
    valid = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_GUEST_MEMFD
    if flags & KVM_MEM_GUEST_MEMFD:
        valid &= ~KVM_MEM_LOG_DIRTY_PAGES  # no dirty logging of private memory
    elif readonly_allowed:
        valid |= KVM_MEM_READONLY  # writes to read-only slots are MMIO, never for gmem
    if flags & ~valid:
        raise KvmError(errno.EINVAL, op, f"flags {flags:#x} not in the valid set {valid:#x}")


def check_memory_region_sanity(op: str, r: MemoryRegion, nr_address_spaces: int) -> None:
    """The general sanity checks of ``__kvm_set_memory_region()``, in the kernel's order;
    ``nr_address_spaces`` is the VM's ``kvm_arch_nr_memslot_as_ids``."""
    if not page_aligned(r.size):
        raise KvmError(errno.EINVAL, op, f"memory_size {r.size:#x} is not page aligned")
    if not page_aligned(r.gpa):
        raise KvmError(errno.EINVAL, op, f"guest_phys_addr {r.gpa:#x} is not page aligned")
    if not page_aligned(r.uaddr) or r.uaddr + r.size > USER_ADDR_LIMIT:
        raise KvmError(errno.EINVAL, op, f"userspace_addr {r.uaddr:#x} + memory_size {r.size:#x} is unaligned or "
                       "not a user range (access_ok)")
    if r.flags & KVM_MEM_GUEST_MEMFD and (not page_aligned(r.gmem_offset) or r.gmem_offset + r.size > U64_MAX):
        raise KvmError(errno.EINVAL, op, f"guest_memfd_offset {r.gmem_offset:#x} unaligned or wraps")
    if r.as_id >= nr_address_spaces:
        raise KvmError(errno.EINVAL, op, f"address space {r.as_id} >= {nr_address_spaces} for this VM")
    if r.gpa + r.size > U64_MAX:
        raise KvmError(errno.EINVAL, op, "guest_phys_addr + memory_size wraps")
    if r.size >> PAGE_SHIFT > KVM_MEM_MAX_NR_PAGES:
        raise KvmError(errno.EINVAL, op, f"memory_size {r.size:#x} exceeds KVM_MEM_MAX_NR_PAGES")


def check_move_or_flags_change(op: str, r: MemoryRegion, old: Memslot, gmem_flag_toggle: bool) -> None:
    """What may change of an existing slot (``KVM_MR_MOVE`` / ``KVM_MR_FLAGS_ONLY``): GPA or dirty logging.

    ``gmem_flag_toggle``: the kernel predates upstream 9935df5333aa and lets a request without
    KVM_MEM_GUEST_MEMFD change a guest_memfd slot (:data:`gmemlab.model.config.GMEM_FLAG_TOGGLE_FIXED_IN`)."""
    if r.flags & KVM_MEM_GUEST_MEMFD:
        raise KvmError(errno.EINVAL, op, "guest_memfd memslots are immutable: delete and re-create")
    if r.uaddr != old.userspace_addr or r.npages != old.npages or (r.flags ^ old.flags) & KVM_MEM_READONLY:
        raise KvmError(errno.EINVAL, op, "only the GPA or LOG_DIRTY_PAGES of a memslot can change")
    if old.has_gmem and not gmem_flag_toggle:
        raise KvmError(errno.EINVAL, op, "guest_memfd memslots cannot be moved or change flags (KVM_MEM_GUEST_MEMFD "
                       "cannot be dropped since upstream 9935df5333aa, 6.18.3)")


def check_overlap(
    memslots: dict[tuple[int, int], Memslot], op: str, as_id: int, slot_id: int, base_gfn: int, npages: int
) -> None:
    """EEXIST when ``[base_gfn, base_gfn + npages)`` overlaps another slot of the address space."""
    for (a, i), other in memslots.items():
        if a == as_id and i != slot_id and base_gfn < other.end_gfn and other.base_gfn < base_gfn + npages:
            raise KvmError(errno.EEXIST, op, f"GPA range overlaps slot {i}")
