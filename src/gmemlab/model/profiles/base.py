"""What a profile answers: the rules that differ between kernel lineages (DESIGN.md principle 5).

Everything profile-specific is asked of a :class:`Behaviour`, so the rest of the model has no
``if profile == ...``: valid creation flags per VM type (spec 1.4, 1.5), capabilities (1.4), whether a file
can be mmapped (2.4), its initial shareability (2.2) and whether conversion can change it, whether memslots
bound to it are GMEM_ONLY (2.6), binding and populate rules (2.6, 2.9), the in-place conversion switch and
its ioctl (linux-7.md 1), and the names of the arch hooks.

The defaults here are the answers of merged Linux up to 7.1 that every lineage starts from; each profile
module overrides only what it changes and lists those changes in ``CHANGES`` (``gmemlab profiles``).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import ClassVar

from ...uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE, ApiProfile, Cap, VmType
from ..config import HostConfig


@dataclass(frozen=True)
class Change:
    """One rule a profile changes relative to its parent: what, where the fact comes from, and the
    :class:`Behaviour` members that implement it (a test checks every override is listed)."""

    summary: str
    source: str
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class PopulateRules:
    """``kvm_gmem_populate`` rules (spec 2.9, linux-7.md 0 and 1.3)."""

    eexist_if_prepared: bool  # up to 6.19: a folio already uptodate ("prepared") fails with EEXIST
    source_page_aligned: bool  # 7.0: the source address must be 4 KiB aligned (EINVAL)
    null_source_in_place: bool  # 7.4: a NULL source launches the page's current contents in place


@dataclass(frozen=True)
class ArchHooks:
    """The arch hooks guest_memfd calls, each named by the metrics counter that counts its calls (None: not
    counted by guest_memfd; the 6.18 and RFC v2 models count preparation in the vendor and HugeTLB code)."""

    prepare: str | None  # kvm_gmem_get_pfn on a folio (7.0: kvm_arch_gmem_prepare; 7.4: make_private)
    reclaim: str | None  # .free_folio (7.0: kvm_arch_gmem_invalidate; 7.4: reclaim)
    make_shared: str | None  # conversion to shared, per folio (7.4 only)
    prepare_every_call: bool  # 7.0: no "prepared" tracking, the hook runs on every get_pfn
    prepare_private_only: bool  # 7.4 calls make_private only for private indices


# Profiles return one constant each: every new guest_memfd inode reads its hooks (bench/convert.py create).
NO_HOOKS = ArchHooks(prepare=None, reclaim=None, make_shared=None, prepare_every_call=False,
                     prepare_private_only=False)


@dataclass(frozen=True)
class Behaviour:
    """The profile-dependent rules of one lineage; subclasses fill them in or change them."""

    api: ApiProfile
    CHANGES: ClassVar[tuple[Change, ...]] = ()  # each profile class lists what it changes

    @property
    def name(self) -> str:
        return self.api.name

    # -- creation --------------------------------------------------------------------------
    def valid_create_flags(self, vm_type: VmType | None, flags: int, config: HostConfig) -> int:
        """The mask ``kvm_gmem_create`` accepts for this request (``None`` = system-wide query)."""
        raise NotImplementedError

    def supports_mmap(self, flags: int) -> bool:
        raise NotImplementedError

    def initially_shared(self, flags: int) -> bool:
        """The shareability every index starts with."""
        raise NotImplementedError

    def per_index_shareability(self, flags: int, config: HostConfig) -> bool:
        """True when shareability is a per-index range map that conversion can change."""
        raise NotImplementedError

    def initial_shareability(self, flags: int, config: HostConfig) -> bool:
        """The initial state on this host: :meth:`initially_shared` unless the config inverts the default."""
        return self.initially_shared(flags)

    def gmem_only(self, flags: int, config: HostConfig) -> bool:
        """Whether a memslot bound to such a file gets KVM_MEMSLOT_GMEM_ONLY (all faults from gmem)."""
        return self.supports_mmap(flags)

    def checks_userspace_addr_at_bind(self, flags: int) -> bool:
        """FT9/RFC2: userspace_addr must map this gmem at guest_memfd_offset (spec 2.6)."""
        return False

    def hugetlb_page_size(self, flags: int) -> int:
        """HugeTLB page size requested by the flags, 0 for none."""
        return 0

    @property
    def gmem_shared_policy(self) -> bool:
        """guest_memfd's ``set_policy``/``get_policy`` vm_ops (U6.19): ``mbind`` on a mapping sets the inode's
        shared policy and folios are allocated by it. Without them (6.18, the RFC on 6.15) the policy stays in
        the VMA and the page cache allocates on the local node (realkernel-private.md finding 15)."""
        return False

    @property
    def fadvise_rejects_negative_offset(self) -> bool:
        """``fadvise64`` with a negative offset: accepted (and ignored on the noop bdi) by 6.18.2 and 6.18.44,
        EINVAL on 7.3.4 for guest_memfd and memfd alike, so a generic VFS check (measured: Debian 7.3.4 under
        QEMU, tests/differential; the upstream commit is not identified)."""
        return False

    # -- bindings (spec 2.6) -------------------------------------------------------------------
    @property
    def bind_overlap_errno(self) -> int:
        """``kvm_gmem_bind`` on a file range another slot already binds: EINVAL up to 7.1 (spec 5.1)."""
        return errno.EINVAL

    def gmem_flag_toggle(self, config: HostConfig) -> bool:
        """Whether a guest_memfd memslot may be re-set without KVM_MEM_GUEST_MEMFD: the kernel under test's
        answer (``config.gmem_flag_toggle``, from its release: 6.18.0-6.18.2 accept it, spec 2.6)."""
        return config.gmem_flag_toggle

    @property
    def bind_offset_signed(self) -> bool:
        """Up to 7.1 ``offset + size > i_size`` is computed in signed ``loff_t``, so a sum that wraps
        negative passes (spec 5.2)."""
        return True

    # -- populate (spec 2.9) ---------------------------------------------------------------------
    @property
    def populate(self) -> PopulateRules:
        return PopulateRules(eexist_if_prepared=True, source_page_aligned=False, null_source_in_place=False)

    @property
    def hooks(self) -> ArchHooks:
        return NO_HOOKS

    # -- memory attributes ------------------------------------------------------------------------
    def in_place_conversion(self, config: HostConfig) -> bool:
        """``kvm.gmem_in_place_conversion``: False where the series does not exist."""
        return False

    def vm_memory_attributes(self, config: HostConfig) -> bool:
        """Whether ``KVM_SET_MEMORY_ATTRIBUTES`` on the VM fd exists (else ENOTTY, realkernel #261)."""
        return config.memory_attributes

    def gmem_private_allowed(self, vm_type: VmType, config: HostConfig) -> bool:
        """Whether a gfn of this VM type can be private through the gmem's own state (``kvm_gmem_is_private``).
        RFC v2 lets any VM type use INIT_PRIVATE (spec 2.14, patch 07)."""
        return True

    @property
    def attributes2_copy_back_on_any_error(self) -> bool:
        """linux-7.md 1.2 step 10: the struct is copied back on every error (v13)."""
        return True

    # -- capabilities ------------------------------------------------------------------------
    def check_extension(self, cap: int, vm_type: VmType | None, config: HostConfig) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm (``vm_type is None``) or on a VM fd (spec 1.4)."""
        has_private = vm_type is None or vm_type.has_private_mem
        if cap in (Cap.USER_MEMORY, Cap.SYNC_MMU, Cap.IMMEDIATE_EXIT, Cap.USER_MEMORY2):
            return 1
        if cap == Cap.MEMORY_FAULT_INFO:
            return 1
        if cap == Cap.NR_MEMSLOTS:
            return config.nr_memslots
        if cap == Cap.EXIT_HYPERCALL:
            return 1 << 12  # KVM_EXIT_HYPERCALL_VALID_MASK on x86: KVM_HC_MAP_GPA_RANGE
        if cap == Cap.MAX_VCPUS:
            return config.max_vcpus
        if cap == Cap.MAX_VCPU_ID:
            return config.max_vcpu_ids
        if cap == Cap.NR_VCPUS:
            return min(config.online_cpus, config.max_vcpus)
        if cap == Cap.READONLY_MEM:
            return 1 if config.readonly_mem else 0
        if cap == Cap.VM_TYPES:
            return sum(1 << t for t in config.vm_types)
        if cap == Cap.PRE_FAULT_MEMORY:
            return 1 if config.pre_fault else 0
        if cap in (Cap.X86_SMM, Cap.MULTI_ADDRESS_SPACE):
            # Without CONFIG_KVM_SMM there is one address space and the cap reads 0 (realkernel #229); with
            # it, /dev/kvm says 2 and a VM says kvm_arch_nr_memslot_as_ids (1 with private memory).
            if config.address_spaces < 2:
                return 0
            if cap == Cap.X86_SMM:
                return 1
            return 1 if vm_type is not None and vm_type.has_private_mem else config.address_spaces
        if cap == Cap.MEMORY_ATTRIBUTES:
            if not self.vm_memory_attributes(config):
                return 0
            # /dev/kvm answers for the system; a VM answers for itself (spec 1.4).
            return KVM_MEMORY_ATTRIBUTE_PRIVATE if has_private else 0
        return self._profile_cap(cap, vm_type, config)

    def _profile_cap(self, cap: int, vm_type: VmType | None, config: HostConfig) -> int:
        return 0

    def describe_flags(self, flags: int) -> str:
        return self.api.describe_flags(flags)
