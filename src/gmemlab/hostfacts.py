"""What a kernel says about itself: the host facts the model is configured from (issue 15 item 3).

:class:`HostFacts` records what any backend answers through the :class:`gmemlab.backend.Backend` interface
(capabilities on ``/dev/kvm`` and on a VM of each type it offers, the VM types, NUMA nodes, the vCPU GPA
window) plus, for a real kernel, its release and KVM module parameters. It is plain data: probed once from
the kernel under test (possibly inside a VM booted for it), saved as JSON, and turned into a model
configuration by :meth:`gmemlab.model.HostConfig.from_facts`. So the model is compared with *that* kernel,
never with assumptions about the machine the tests happen to run on.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .uapi import Cap, VmType, cap_guest_memfd_memory_attributes

PROBED_CAPS = (
    Cap.USER_MEMORY, Cap.NR_MEMSLOTS, Cap.SYNC_MMU, Cap.READONLY_MEM, Cap.IMMEDIATE_EXIT, Cap.USER_MEMORY2,
    Cap.MEMORY_FAULT_INFO, Cap.MEMORY_ATTRIBUTES, Cap.GUEST_MEMFD, Cap.VM_TYPES, Cap.PRE_FAULT_MEMORY,
    Cap.GUEST_MEMFD_FLAGS, Cap.X86_SMM, Cap.MULTI_ADDRESS_SPACE, Cap.NR_VCPUS, Cap.MAX_VCPUS, Cap.MAX_VCPU_ID,
)
KVM_MODULES = ("kvm", "kvm_amd", "kvm_intel", "kvm_pvm")
IN_PLACE_PARAM = "kvm.gmem_in_place_conversion"
GMEM_ATTRIBUTES = "GUEST_MEMFD_MEMORY_ATTRIBUTES"  # key of KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES in the caps


def profile_for(release: str, module_params: dict[str, str]) -> tuple[str, str]:
    """The model profile of a kernel, and the measured values that chose it.

    * ``kvm.gmem_in_place_conversion`` present: the in-place conversion series, ``linux-7.4`` from 7.4 on and
      ``linux-7.4-v8`` (an out-of-tree port, like the recorded 7.1.5 + v8) before;
    * else 7.2 and later: ``linux-7.3`` (7.2's EEXIST and unsigned offsets; 7.3 changed nothing for gmem);
    * else ``linux-6.18`` (6.19-7.1 kernels add gmem mempolicy and the 7.0 populate rules to it: nearest).
    """
    found = re.match(r"(\d+)\.(\d+)", release)
    version = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    param = module_params.get(IN_PLACE_PARAM)
    seen = f"uname -r {release}, /sys/module/kvm/parameters/gmem_in_place_conversion " + (
        f"= {param}" if param is not None else "absent")
    if param is not None:
        return ("linux-7.4" if version >= (7, 4) else "linux-7.4-v8"), seen
    if version >= (7, 2):
        return "linux-7.3", seen
    return "linux-6.18", seen


@dataclass(frozen=True)
class HostFacts:
    """Capability values by name (``KVM_CAP_`` dropped), for the system and per VM type."""

    release: str
    system_caps: dict[str, int]
    vm_caps: dict[str, dict[str, int]]  # VM type label -> caps on a VM fd of that type
    vm_types: tuple[str, ...]  # labels of the types KVM_CREATE_VM accepts
    numa_nodes: int
    gpa_window: tuple[int, int]
    module_params: dict[str, str] = field(default_factory=dict)  # "kvm.tdp_mmu" -> "Y"
    # mm features the kernel was built with, where they change answers the model gives (read_mm_features)
    mm_features: dict[str, bool] = field(default_factory=dict)
    phys_bits: int = 0  # the CPU's MAXPHYADDR as the kernel sees it (/proc/cpuinfo), 0 when unknown

    # -- derived ---------------------------------------------------------------------------------------------
    @property
    def version(self) -> tuple[int, int]:
        """(major, minor) of the release, (0, 0) if it does not start with digits."""
        found = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(found.group(1)), int(found.group(2))) if found else (0, 0)

    @property
    def release_version(self) -> tuple[int, int, int] | None:
        """(major, minor, sublevel) of the release (sublevel 0 when absent), None if it names no kernel version
        (a model's own facts)."""
        found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", self.release)
        if not found:
            return None
        return int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)

    def cap(self, cap: Cap, vm_type: VmType | None = None) -> int:
        table = self.system_caps if vm_type is None else self.vm_caps.get(vm_type.label, {})
        return table.get(cap.name, 0)

    def profile(self) -> tuple[str, str]:
        """The model profile of this kernel and why (:func:`profile_for`)."""
        return profile_for(self.release, self.module_params)

    def types(self) -> list[VmType]:
        return [VmType[label.upper().replace("-", "_")] for label in self.vm_types]

    @property
    def is_pvm(self) -> bool:
        """The ``kvm_pvm`` host of realkernel.md (software virtualisation, shadow MMU)."""
        return any(k.startswith("kvm_pvm.") for k in self.module_params)

    # -- probing and serialising -------------------------------------------------------------------------------
    @classmethod
    def probe(cls, backend: Any) -> HostFacts:
        """Ask a backend (the kernel's ``/dev/kvm`` or a model) everything the model needs."""
        params = backend.module_params() if hasattr(backend, "module_params") else {}
        # KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES has no settled number (linux-7.md 1.1): on a kernel without the
        # series the same number may be another capability, so it is asked only where the series' parameter
        # exists (or of a model, which answers for its own profile).
        in_place = IN_PLACE_PARAM in params or getattr(backend, "name", "") == "model"

        def caps(obj: Any) -> dict[str, int]:
            out = {c.name: int(obj.check_extension(c)) for c in PROBED_CAPS}
            out[GMEM_ATTRIBUTES] = int(obj.check_extension(cap_guest_memfd_memory_attributes())) if in_place else 0
            return out

        system = caps(backend)
        types = list(backend.vm_types())
        per_vm: dict[str, dict[str, int]] = {}
        for t in types:
            vm = backend.create_vm(int(t))
            try:
                per_vm[t.label] = caps(vm)
            finally:
                vm.close()
        release = os.uname().release if getattr(backend, "name", "") == "kernel" else f"model {backend.profile.name}"
        lo, hi = backend.guest_gpa_window()
        kernel = getattr(backend, "name", "") == "kernel"
        mm = read_mm_features() if kernel else {}
        return cls(release, system, per_vm, tuple(t.label for t in types), int(backend.nr_numa_nodes()),
                   (int(lo), int(hi)), params, mm, read_phys_bits() if kernel else 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HostFacts:
        try:
            data = json.loads(text)
            return cls(
                release=str(data["release"]), system_caps={str(k): int(v) for k, v in data["system_caps"].items()},
                vm_caps={str(t): {str(k): int(v) for k, v in caps.items()} for t, caps in data["vm_caps"].items()},
                vm_types=tuple(str(t) for t in data["vm_types"]), numa_nodes=int(data["numa_nodes"]),
                gpa_window=(int(data["gpa_window"][0]), int(data["gpa_window"][1])),
                module_params={str(k): str(v) for k, v in data.get("module_params", {}).items()},
                mm_features={str(k): bool(v) for k, v in data.get("mm_features", {}).items()},
                phys_bits=int(data.get("phys_bits", 0)),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"not a host-facts JSON document: {type(exc).__name__}: {exc}") from None


MM_FEATURES = {"ksm": "ksm", "transparent_hugepage": "transparent_hugepage"}  # name -> /sys/kernel/mm entry


def read_mm_features(root: str = "/sys/kernel/mm") -> dict[str, bool]:
    """Which of CONFIG_KSM and CONFIG_TRANSPARENT_HUGEPAGE the running kernel has: each makes its madvise
    advices (MADV_[UN]MERGEABLE; MADV_[NO]HUGEPAGE, MADV_COLLAPSE) valid, else they are EINVAL."""
    features = {name: os.path.isdir(os.path.join(root, entry)) for name, entry in MM_FEATURES.items()}
    features["pkeys"] = read_pkeys()
    return features


def read_pkeys(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the kernel enabled memory protection keys (the ``ospke`` CPU flag: CPU PKU and
    CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS). With them, memory mapped PROT_EXEC alone is execute-only: the
    kernel gives it the execute-only pkey (``arch_override_mprotect_pkey``), so a data read faults. QEMU's
    ``-cpu max`` has PKU; found by the lockstep fuzzer inside the lab 6.18.2 and Debian 7.3.4 VMs."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and "ospke" in line.split() for line in f)
    except OSError:
        return False


def read_phys_bits(cpuinfo: str = "/proc/cpuinfo") -> int:
    """The physical address width the kernel reports (``address sizes : N bits physical``), 0 if unreadable."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                found = re.match(r"address sizes\s*:\s*(\d+) bits physical", line)
                if found:
                    return int(found.group(1))
    except OSError:
        pass
    return 0


def read_module_params(root: str = "/sys/module") -> dict[str, str]:
    """``module.param`` -> value for the KVM modules loaded here (the first line of each readable file)."""
    out: dict[str, str] = {}
    for module in KVM_MODULES:
        directory = os.path.join(root, module, "parameters")
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(directory, name)) as f:
                    out[f"{module}.{name}"] = f.readline().strip()
            except OSError:
                continue
    return out
