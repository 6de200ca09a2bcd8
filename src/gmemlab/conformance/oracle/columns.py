"""The four recorded kernels as model configurations (realkernel-private.md "The kernels").

Each column is a profile plus the host facts the recording states about that kernel; everything else the
model answers itself. What comes from the recording is said next to each value; the capability rows of
section 1 are then *outputs* the model must reproduce (only ``/dev/kvm``'s VM types, per-VM attribute
support and SMM are inputs, read from the ``/dev/kvm`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...model import HostConfig
from ...uapi import VmType


@dataclass(frozen=True)
class Column:
    """One recorded kernel: its column id, the model profile, the host facts, and its release string."""

    id: str
    profile: str
    config: HostConfig
    release: str
    note: str


# Facts common to the four: KVM_CAP_VM_TYPES 0x3 (1/cap/devkvm/VM_TYPES), SMM (X86_SMM 1, MULTI_ADDRESS_SPACE 2
# on /dev/kvm), KVM_CAP_NR_MEMSLOTS 0x7ffc, PRE_FAULT_MEMORY 1. NUMA nodes were not recorded; 1 is enough for
# the rows (mbind to node 0).
_BASE = HostConfig(vm_types=(VmType.DEFAULT, VmType.SW_PROTECTED), address_spaces=2, nr_memslots=0x7FFC,
                   pre_fault=True, numa_nodes=1)

COLUMNS: dict[str, Column] = {
    "A": Column("A", "linux-6.18", _BASE.with_(memory_attributes=True), "6.18.2-gmemlab",
                "6.18.2, SW_PROTECTED VMs, per-VM attributes (1/cap/devkvm/MEMORY_ATTRIBUTES 0x8)"),
    # B: the per-VM attribute option is off (MEMORY_ATTRIBUTES 0) and the parameter is left at its default,
    # which the model's unverified default rule ("auto") must turn on (1/param: Y).
    "B": Column("B", "linux-7.4-v8", _BASE.with_(memory_attributes=False), "7.1.5-gmemlab+",
                "7.1.5 + in-place v8, per-VM option off, parameter at its default"),
    "B0": Column("B0", "linux-7.4-v8", _BASE.with_(memory_attributes=False, gmem_in_place_conversion=False),
                 "7.1.5-gmemlab+", "B booted with kvm.gmem_in_place_conversion=0 (0/cmdline)"),
    "Bv": Column("Bv", "linux-7.4-v8", _BASE.with_(memory_attributes=True), "7.1.5-gmemlab+",
                 "7.1.5 + v8 with the per-VM option on, parameter at its default"),
}
