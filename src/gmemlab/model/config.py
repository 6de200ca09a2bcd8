"""Host configuration of a modelled kernel: what the build and the machine provide.

The same guest_memfd code behaves differently with different Kconfig options and hardware (spec 1.4,
realkernel.md section 2). ``HostConfig.upstream()`` is an x86-64 host with every option on; the real
backend's probe turns this machine's answers into a config so the model mirrors it
(``HostConfig.from_probe``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..backend import Backend
from ..hostfacts import HostFacts
from ..level import Level
from ..uapi import Cap, VmType

# HugeTLB pages per size: 4 TiB of 2 MiB pages and 4 TiB of 1 GiB pages (pool pages cost nothing).
UPSTREAM_POOL = {Level.PG_2M.bytes: 1 << 21, Level.PG_1G.bytes: 1 << 12}


@dataclass(frozen=True)
class HostConfig:
    """Build and machine facts the model needs.

    * ``vm_types``: VM types KVM_CREATE_VM accepts (KVM_CAP_VM_TYPES).
    * ``memory_attributes``: per-VM memory attributes compiled in (CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES, called
      CONFIG_KVM_VM_MEMORY_ATTRIBUTES by the in-place series); without it KVM_SET_MEMORY_ATTRIBUTES is ENOTTY
      and KVM_CAP_MEMORY_ATTRIBUTES is 0 (realkernel #10, #261; realkernel-private.md column B).
    * ``gmem_in_place_conversion``: the ``kvm.gmem_in_place_conversion`` module parameter (linux-7.4 only);
      None = its default (:data:`gmemlab.model.profiles.GMEM_IN_PLACE_CONVERSION_DEFAULT`, unverified).
    * ``pre_fault``: KVM_CAP_PRE_FAULT_MEMORY (TDP MMU only).
    * ``address_spaces``: memslot address spaces of VMs without private memory (2 with CONFIG_KVM_SMM, 1
      without; realkernel #229); VMs with private memory always have 1 (``kvm_arch_nr_memslot_as_ids``).
    * ``max_gpa_bits``: ``kvm_mmu_max_gfn()`` bound: the host's MAXPHYADDR with TDP (40 in the TCG lab VM),
      52 under the shadow MMU (this machine).
    * ``hugetlb``: CONFIG_KVM_GMEM_HUGETLB (rfc-v2 only).
    * ``max_vcpus`` / ``max_vcpu_ids``: KVM_CAP_MAX_VCPUS and KVM_CAP_MAX_VCPU_ID (``kvm_vm_ioctl_create_vcpu``
      refuses ids at or above the latter, and vCPUs beyond the former, with EINVAL).
    * ``readonly_mem``: ``kvm_arch_has_readonly_mem`` for VMs without protected state.
    * ``hugetlb_pool_pages``: free HugeTLB pages per page size (bytes -> count) that subpools reserve
      from at creation (workloads 3.1); a short pool makes HUGETLB creation fail with ENOMEM.
    * ``gmem_policy``: name of the huge-folio split/merge policy (:mod:`gmemlab.model.policy`; ``eager`` is
      RFC v2, ``deferred`` is Michael Roth's lpage_info-like proposal, workloads 2.3).
    * ``gmem_prepare``: preparedness tracking: ``folio`` (RFC v2 folio uptodate), ``per-4k`` (a prepared
      record per 4 KiB) or ``guest-prepared`` (the discussed SHAREABILITY_GUEST_PREPARED state), 3.7.
    * ``default_private``: rfc-v2 variant where files start private and bit 1 means INIT_SHARED (the
      merged default, workloads 0); False keeps the RFC's shared default with INIT_PRIVATE.
    * ``tdp_max_level``: ``max_huge_page_level`` (1G TDP pages, or 2M only), workloads 2.1 step 1.
    * ``tdx_huge_private``: TDX private memory may map at 2M (the RFC); False = 4K (upstream).
    * ``snp_rmp_max_level``: the largest RMP entry ``sev_gmem_prepare`` assigns to SNP private memory, hence
      the largest private NPT leaf (``sev_gmem_max_mapping_level`` returns the RMP entry's level): 2M in the
      kernel (the RMP has no 1G entries); 4K is a what-if where KVM assigns only 4K entries (what it does
      for order-0 folios, ``is_large_rmp_possible``), so no 2M PVALIDATE succeeds.
    * ``ksm``, ``thp``: CONFIG_KSM and CONFIG_TRANSPARENT_HUGEPAGE; without them madvise refuses their advices
      (MADV_[UN]MERGEABLE; MADV_[NO]HUGEPAGE and MADV_COLLAPSE) with EINVAL (``madvise_behavior_valid``).
    * ``gmem_flag_toggle``: an existing guest_memfd memslot may be re-set without KVM_MEM_GUEST_MEMFD (a
      MOVE or FLAGS_ONLY change that leaves the file range bound to the freed slot), as kernels before upstream
      9935df5333aa do (:func:`gmem_flag_toggle_accepted`); False is current upstream: EINVAL.
    * ``mmio_caching``: ``kvm.mmio_caching``: a fault on a GPA without memslot leaves an MMIO SPTE
      (:func:`gmemlab.model.page_fault.kvm_mmu_page_fault`); N on the kvm_pvm host, Y under TCG's SVM/NPT.
    """

    vm_types: tuple[VmType, ...] = tuple(VmType)
    memory_attributes: bool = True
    pre_fault: bool = True
    address_spaces: int = 1
    max_gpa_bits: int = 52
    hugetlb: bool = False
    readonly_mem: bool = True
    nr_memslots: int = 32764
    max_vcpus: int = 1024  # KVM_CAP_MAX_VCPUS: KVM_MAX_VCPUS (x86, CONFIG_KVM_MAX_NR_VCPUS default)
    max_vcpu_ids: int = 4096  # KVM_CAP_MAX_VCPU_ID: KVM_MAX_VCPU_IDS, vCPU ids are below it
    online_cpus: int = 2  # num_online_cpus(): KVM_CAP_NR_VCPUS is the smaller of it and max_vcpus
    hugetlb_pool_pages: dict[int, int] = field(default_factory=dict)
    gpa_window: tuple[int, int] | None = None  # GPAs a vCPU can reach; None = the whole space
    numa_nodes: int = 2  # online NUMA nodes; 2 so the selftest's NUMA cases run on the model
    gmem_policy: str = "eager"
    gmem_prepare: str = "folio"
    default_private: bool = False
    tdp_max_level: Level = Level.PG_1G
    tdx_huge_private: bool = True
    snp_rmp_max_level: Level = Level.PG_2M
    gmem_in_place_conversion: bool | None = None
    mmio_caching: bool = True
    gmem_flag_toggle: bool = False
    ksm: bool = True
    thp: bool = True
    pkeys: bool = False  # protection keys enabled: PROT_EXEC alone is execute-only (hostfacts.read_pkeys)

    def __post_init__(self) -> None:
        # Callers may say 1, 2 or 3 (the kernel's numbers); the model reads a Level.
        object.__setattr__(self, "tdp_max_level", Level(self.tdp_max_level))
        object.__setattr__(self, "snp_rmp_max_level", Level(self.snp_rmp_max_level))

    @classmethod
    def upstream(cls) -> HostConfig:
        """Every option on, including CONFIG_KVM_GMEM_HUGETLB with a pool large enough for any case
        and simulated guest (4 TiB of 2 MiB pages, 4 TiB of 1 GiB pages; pool pages cost nothing)."""
        return cls(hugetlb=True, hugetlb_pool_pages=dict(UPSTREAM_POOL))

    @classmethod
    def from_facts(cls, facts: HostFacts) -> HostConfig:
        """The model of the kernel that reported ``facts`` (:class:`gmemlab.hostfacts.HostFacts`): its VM
        types, memory attributes, pre-fault, read-only memory, memslot count, memslot address spaces (2 with
        CONFIG_KVM_SMM: KVM_CAP_MULTI_ADDRESS_SPACE), NUMA nodes and vCPU GPA window, so differential runs
        exercise the same paths on both sides."""
        return cls(
            vm_types=tuple(facts.types()),
            memory_attributes=bool(facts.cap(Cap.MEMORY_ATTRIBUTES)),
            pre_fault=bool(facts.cap(Cap.PRE_FAULT_MEMORY)),
            readonly_mem=bool(facts.cap(Cap.READONLY_MEM)),
            nr_memslots=facts.cap(Cap.NR_MEMSLOTS) or 32764,
            max_vcpus=facts.cap(Cap.MAX_VCPUS) or 1024,
            max_vcpu_ids=facts.cap(Cap.MAX_VCPU_ID) or 4096,
            online_cpus=facts.cap(Cap.NR_VCPUS) or 2,
            address_spaces=max(1, facts.cap(Cap.MULTI_ADDRESS_SPACE)),
            gmem_in_place_conversion=_param_bool(facts.module_params.get("kvm.gmem_in_place_conversion")),
            gpa_window=facts.gpa_window,
            numa_nodes=facts.numa_nodes,
            mmio_caching=_param_bool(facts.module_params.get("kvm.mmio_caching")) is not False,
            gmem_flag_toggle=gmem_flag_toggle_accepted(facts.release_version),
            max_gpa_bits=max_gpa_bits(facts),
            ksm=facts.mm_features.get("ksm", True),
            thp=facts.mm_features.get("transparent_hugepage", True),
            pkeys=facts.mm_features.get("pkeys", False),
        )

    @classmethod
    def from_backend(cls, backend: Backend) -> HostConfig:
        """Mirror what a backend (the real kernel) reports, through :class:`gmemlab.hostfacts.HostFacts`."""
        return cls.from_facts(HostFacts.probe(backend))

    def with_(self, **changes: object) -> HostConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


def _param_bool(value: str | None) -> bool | None:
    """A bool module parameter as /sys/module shows it (Y/N), None when the parameter does not exist."""
    return None if value is None else value.strip().upper() in ("Y", "1")


# Upstream 9935df5333aa "KVM: Disallow toggling KVM_MEM_GUEST_MEMFD on an existing memslot" (Sean Christopherson,
# kvm-x86 fixes, pulled as "KVM fixes for 6.19-rc1"): until then __kvm_set_memory_region refused a change to an
# existing slot only when the *new* flags had KVM_MEM_GUEST_MEMFD, so dropping the flag was accepted and the old
# slot was freed while its guest_memfd range stayed bound (a use-after-free). On the 6.18.y line it is in the
# 6.18.3-rc1 stable review (2025-12-29, linux-stable-rc linux-6.18.y 336c9c91afe6): 6.18.0-6.18.2 accept the
# change (measured on 6.18.2 under QEMU), 6.18.3 and later refuse it (measured EINVAL on 6.18.44 here). Older
# stable lines got backports at sublevels not pinned here; the model has no profile before 6.18, so they count
# as unfixed. First sublevel with the fix per stable line; override an entry for a vendor kernel.
GMEM_FLAG_TOGGLE_FIXED_IN: dict[tuple[int, int], int] = {(6, 18): 3}
GMEM_FLAG_TOGGLE_FIXED_MAINLINE = (6, 19)


def max_gpa_bits(facts: HostFacts) -> int:
    """``kvm_mmu_max_gfn()``'s width: the host MAXPHYADDR when TDP is on (KVM_CAP_PRE_FAULT_MEMORY reads
    ``tdp_enabled`` on x86), else 52; memslots ending above it are EINVAL (``kvm_arch_prepare_memory_region``)."""
    if facts.cap(Cap.PRE_FAULT_MEMORY) and facts.phys_bits:
        return facts.phys_bits
    return 52


def gmem_flag_toggle_accepted(version: tuple[int, int, int] | None) -> bool:
    """Whether a kernel of ``version`` (major, minor, sublevel) accepts dropping KVM_MEM_GUEST_MEMFD from an
    existing memslot; None (no release, e.g. a model's facts) is current upstream: refused."""
    if version is None:
        return False
    major, minor, sublevel = version
    if (major, minor) >= GMEM_FLAG_TOGGLE_FIXED_MAINLINE:
        return False
    fixed = GMEM_FLAG_TOGGLE_FIXED_IN.get((major, minor))
    return fixed is None or sublevel < fixed
