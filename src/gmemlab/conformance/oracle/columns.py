"""The four recorded kernels as host facts (realkernel-private.md "The kernels").

Each column is a profile plus the host facts the recording states about that kernel, as a
:class:`gmemlab.hostfacts.HostFacts` (what a kernel says about itself): the model is configured from them
(``HostConfig.from_facts``) as it is from a live kernel. Only ``/dev/kvm``'s answers are given (VM types, the
per-VM attribute mask, SMM, memslots, pre-fault, the module parameter where the recording set it); every
per-VM capability of section 1 is the model's own answer and must match the recording.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...hostfacts import HostFacts


@dataclass(frozen=True)
class Column:
    """One recorded kernel: its column id, the model profile, its host facts, and what it was."""

    id: str
    profile: str
    facts: HostFacts
    note: str

    @property
    def release(self) -> str:
        return self.facts.release


def _facts(release: str, memory_attributes: int, params: dict[str, str]) -> HostFacts:
    # /dev/kvm rows of section 1 common to the four: VM_TYPES 0x3, X86_SMM 1, MULTI_ADDRESS_SPACE 2, NR_MEMSLOTS
    # 0x7ffc, PRE_FAULT_MEMORY 1, USER_MEMORY2 1. READONLY_MEM and the NUMA node count were not recorded (1 and
    # 1 are what the rows need); the vCPU GPA window is the whole space (the probe's guest sits at GPA 0).
    system = {"VM_TYPES": 0x3, "X86_SMM": 1, "MULTI_ADDRESS_SPACE": 2, "NR_MEMSLOTS": 0x7FFC, "PRE_FAULT_MEMORY": 1,
              "USER_MEMORY2": 1, "READONLY_MEM": 1, "MEMORY_ATTRIBUTES": memory_attributes}
    return HostFacts(release=release, system_caps=system, vm_caps={}, vm_types=("default", "sw-protected"),
                     numa_nodes=1, gpa_window=(0, 1 << 52), module_params=params)


COLUMNS: dict[str, Column] = {
    "A": Column("A", "linux-6.18", _facts("6.18.2-gmemlab", 0x8, {}),
                "6.18.2, SW_PROTECTED VMs, per-VM attributes (1/cap/devkvm/MEMORY_ATTRIBUTES 0x8)"),
    # B: the per-VM option is off (MEMORY_ATTRIBUTES 0) and kvm.gmem_in_place_conversion is not given: it is
    # left at its default, which the model's unverified default rule ("auto") must turn on (1/param: Y).
    "B": Column("B", "linux-7.4-v8", _facts("7.1.5-gmemlab+", 0, {}),
                "7.1.5 + in-place v8, per-VM option off, parameter at its default"),
    "B0": Column("B0", "linux-7.4-v8", _facts("7.1.5-gmemlab+", 0, {"kvm.gmem_in_place_conversion": "N"}),
                 "B booted with kvm.gmem_in_place_conversion=0 (0/cmdline)"),
    "Bv": Column("Bv", "linux-7.4-v8", _facts("7.1.5-gmemlab+", 0x8, {}),
                 "7.1.5 + v8 with the per-VM option on, parameter at its default"),
}
