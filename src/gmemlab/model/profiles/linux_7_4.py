"""``linux-7.4``: what the in-place conversion series (v13, queued for 7.4) changes, relative to ``linux-7.3``.

The conversion rules are behind the module parameter ``kvm.gmem_in_place_conversion`` (linux-7.md 1.1): with
it off, the uAPI answers are ``linux-7.3``'s (the renamed arch hooks and populate's NULL source are code
changes that do not depend on it). With it on:

* ``KVM_SET_MEMORY_ATTRIBUTES2`` on the guest_memfd fd converts ranges in place (the ten checks of
  linux-7.md 1.2 are :mod:`gmemlab.model.gmem_attributes`); every file has a per-index attribute tree,
  PRIVATE unless ``INIT_SHARED`` (1.3);
* ``INIT_SHARED`` becomes valid for x86 CoCo VM types;
* ``KVM_CAP_MEMORY_ATTRIBUTES`` (the per-VM mask) reads 0 and the per-VM ioctl is gone (ENOTTY);
  ``KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`` reads PRIVATE on /dev/kvm and on VMs with private memory;
* gmem memslots are GMEM_ONLY (every guest fault is served from guest_memfd);
* the arch hooks are ``make_private`` (get_pfn on a private index), ``make_shared`` (conversion to shared,
  per folio) and ``reclaim`` (``.free_folio``); a NULL populate source launches the page in place.

Two values are UNVERIFIED (linux-7.md 1.1) and each kept in one overridable constant: the capability number
(:data:`gmemlab.uapi.KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`) and the parameter's default
(:data:`GMEM_IN_PLACE_CONVERSION_DEFAULT`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from ...uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE, GmemFlags618, VmType, cap_guest_memfd_memory_attributes
from ..config import HostConfig
from .base import ArchHooks, Change, PopulateRules
from .linux_7_3 import Linux73

HOOKS_IN_PLACE = ArchHooks(prepare="make_private", reclaim="reclaim", make_shared="make_shared",
                           prepare_every_call=True, prepare_private_only=True)

# UNVERIFIED: the default of kvm.gmem_in_place_conversion. v8 (the recorded kernel): on exactly when the
# per-VM attribute option (CONFIG_KVM_VM_MEMORY_ATTRIBUTES) is compiled out: realkernel-private.md 1/param
# reads Y on B (option off) and N on Bv (option on). "auto" is that rule; "Y" and "N" force a value.
GMEM_IN_PLACE_CONVERSION_DEFAULT = "auto"
IN_PLACE_DEFAULT_ENV = "GMEMLAB_GMEM_IN_PLACE_CONVERSION_DEFAULT"


def in_place_default(vm_memory_attributes: bool) -> bool:
    """The parameter's value when the host config does not set it: ``$GMEMLAB_GMEM_IN_PLACE_CONVERSION_DEFAULT``
    if set, else :data:`GMEM_IN_PLACE_CONVERSION_DEFAULT` (``auto`` = v8's ``!CONFIG_KVM_VM_MEMORY_ATTRIBUTES``)."""
    rule = os.environ.get(IN_PLACE_DEFAULT_ENV, "").strip() or GMEM_IN_PLACE_CONVERSION_DEFAULT
    if rule.lower() == "auto":
        return not vm_memory_attributes
    if rule.upper() in ("Y", "1", "ON"):
        return True
    if rule.upper() in ("N", "0", "OFF"):
        return False
    raise ValueError(f"${IN_PLACE_DEFAULT_ENV}={rule!r}: use auto, Y or N")


@dataclass(frozen=True)
class Linux74(Linux73):
    """Linux 7.3 + in-place conversion (v13) behind ``kvm.gmem_in_place_conversion``."""

    CHANGES: ClassVar[tuple[Change, ...]] = (
        Change("module parameter kvm.gmem_in_place_conversion gates everything below (default UNVERIFIED: "
               "v8 used !CONFIG_KVM_VM_MEMORY_ATTRIBUTES)", "linux-7.md 1.1", ("in_place_conversion",)),
        Change("KVM_SET_MEMORY_ATTRIBUTES2 on the guest_memfd fd; every file keeps a per-index attribute tree, "
               "PRIVATE unless INIT_SHARED", "linux-7.md 1.1-1.3", ("per_index_shareability",)),
        Change("a VM without private memory never has private gfns, whatever its gmem's tree says (inferred: "
               "step 4 refuses its conversions, its capability reads 0)", "linux-7.md 1.1, 1.2 step 4",
               ("gmem_private_allowed",)),
        Change("INIT_SHARED valid for x86 CoCo VM types", "linux-7.md 1.1", ("valid_create_flags",)),
        Change("KVM_CAP_MEMORY_ATTRIBUTES reads 0 and the per-VM ioctl is gone; KVM_CAP_GUEST_MEMFD_MEMORY_"
               "ATTRIBUTES (number UNVERIFIED, 250 in v8) reads PRIVATE", "linux-7.md 1.1",
               ("vm_memory_attributes", "_profile_cap")),
        Change("gmem memslots are GMEM_ONLY when conversion is on or MMAP is set", "linux-7.md 1.1",
               ("gmem_only",)),
        Change("arch hooks make_private (get_pfn, private index), make_shared (conversion to shared) and "
               "reclaim (.free_folio)", "linux-7.md 1.3", ("hooks",)),
        Change("populate requires private gfns and accepts a NULL source: the page is launched in place",
               "linux-7.md 1.3", ("populate",)),
    )

    def in_place_conversion(self, config: HostConfig) -> bool:
        if config.gmem_in_place_conversion is not None:
            return config.gmem_in_place_conversion
        return in_place_default(config.memory_attributes)

    def per_index_shareability(self, flags: int, config: HostConfig) -> bool:
        return self.in_place_conversion(config) or super().per_index_shareability(flags, config)

    def gmem_private_allowed(self, vm_type: VmType, config: HostConfig) -> bool:
        return vm_type.has_private_mem

    def valid_create_flags(self, vm_type: VmType | None, flags: int, config: HostConfig) -> int:
        valid = super().valid_create_flags(vm_type, flags, config)
        if self.in_place_conversion(config):
            valid |= int(GmemFlags618.INIT_SHARED)
        return valid

    def vm_memory_attributes(self, config: HostConfig) -> bool:
        return super().vm_memory_attributes(config) and not self.in_place_conversion(config)

    def _profile_cap(self, cap: int, vm_type: VmType | None, config: HostConfig) -> int:
        if cap == cap_guest_memfd_memory_attributes():
            if not self.in_place_conversion(config):
                return 0
            return KVM_MEMORY_ATTRIBUTE_PRIVATE if vm_type is None or vm_type.has_private_mem else 0
        return super()._profile_cap(cap, vm_type, config)

    def gmem_only(self, flags: int, config: HostConfig) -> bool:
        return self.in_place_conversion(config) or super().gmem_only(flags, config)

    @property
    def hooks(self) -> ArchHooks:
        return HOOKS_IN_PLACE

    @property
    def populate(self) -> PopulateRules:
        return PopulateRules(eexist_if_prepared=False, source_page_aligned=True, null_source_in_place=True)
