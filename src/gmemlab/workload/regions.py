"""The shared (decrypted) regions a CoCo guest creates, as Linux and OVMF size and time them (docs/placement.md §2).

A scenario's ``[shared_regions.NAME]`` table names a ``rule`` (by default its own name). The rule gives the
size, the count, the alignment, the protocol that carries the private -> shared change and *when* in boot it
happens; :mod:`gmemlab.arch.regions` gives *where*. Any of them can be overridden in the scenario (an explicit
alternative); ``custom`` regions give everything themselves.

Rules (Linux v6.18 and OVMF; confidence and details in docs/placement.md):

* ``swiotlb``: 6% of RAM clamped to [64 MiB, 1 GiB], 256 KiB-aligned, rounded up to a power of two
  (``mem_encrypt_setup_arch``, ``swiotlb_adjust_size``, ``round_up_default_nslabs``); shared in
  ``mem_encrypt_init`` -> ``swiotlb_update_mem_attributes`` (GHCB PSC on SNP, MapGPA on TDX).
* ``bss_decrypted`` (SNP): the 2 MiB-aligned, 2 MiB-padded ``.bss..decrypted`` section (``BSS_DECRYPTED`` in
  ``vmlinux.lds.S``), made shared whole at startup with the MSR protocol (``sme_postprocess_startup``), its
  unused tail made private again in ``free_initmem`` -> ``mem_encrypt_free_decrypted_mem`` (GHCB).
* ``ghcb`` (SNP): one ``struct sev_es_runtime_data`` per possible CPU, its first 4 KiB page shared with the MSR
  protocol (``sev_es_init_vc_handling`` -> ``init_ghcb`` -> ``early_set_memory_decrypted``), in ``trap_init``.
* ``percpu_decrypted`` (SNP): the ``.data..percpu..decrypted`` page of each CPU (``apf_reason``,
  ``steal_time``, ``kvm_apic_eoi``), shared with the MSR protocol in ``sev_map_percpu_data``.
* ``firmware_ghcb`` (SNP): OVMF's per-CPU GHCB pages (``AmdSevEsInitialize``: 2 reserved pages per CPU, the
  first shared), shared by the firmware and never made private again [docs/placement.md F6b, M].
* ``atomic_pool``: the three DMA atomic pools (KERNEL, DMA32, DMA) of ``dma_atomic_pool_init``, each one
  naturally aligned block of 128 KiB per GiB of RAM within [128 KiB, 4 MiB], shared at postcore initcall.
* ``virtio_ring``: one ``dma_alloc_coherent`` per virtqueue: a 256-entry split ring is order 1 (8 KiB);
  virtio-blk-pci has one request queue per vCPU, so count = vCPUs + 3 [docs/placement.md §2, M].
* ``kvmclock``: ``kvmclock_init_mem`` decrypts ``(cpus - 64) x 64 B`` when there are more than 64 CPUs.
* ``mmio_hole`` (TDX, not RAM): OVMF's MapGPA(shared) of the 32-bit PCI hole; QEMU ignores it.
* ``mmio_guard`` (pKVM, not RAM): one MMIO_GUARD_MAP per device page.
* ``custom``: a region of the scenario's own, shared in boot after the rules' regions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .derived import atomic_pool_size, swiotlb_default_size
from .units import KiB, MiB


class Guest(Protocol):
    """What a rule's size and count depend on (a :class:`~gmemlab.workload.scenario.Scenario`)."""

    @property
    def guest_mem(self) -> int: ...

    @property
    def vcpus(self) -> int: ...


PAGE = 4096
# When a region is made shared, in boot order (start_kernel, then initcalls).
WHEN = ("firmware", "startup", "smp_prepare_boot_cpu", "trap_init", "mem_encrypt_init", "early_initcall",
        "postcore_initcall", "device_initcall", "late")


@dataclass(frozen=True)
class RegionRule:
    """Defaults of one region kind; ``size``/``count`` are functions of the scenario (RAM, vCPUs)."""

    arches: tuple[str, ...]
    size: Callable[[Guest], int] | None  # None: the scenario must give the size
    count: Callable[[Guest], int]
    align: int
    protocol: str  # "ghcb" (PSC descriptors / MapGPA / MEM_SHARE) or "msr" (SNP: one page per VMGEXIT)
    when: str
    ram: bool = True


def _one(sc: Guest) -> int:
    return 1


def _vcpus(sc: Guest) -> int:
    return sc.vcpus


RULES: dict[str, RegionRule] = {
    "swiotlb": RegionRule(("snp", "tdx", "pkvm"), lambda sc: swiotlb_default_size(sc.guest_mem), _one, PAGE,
                          "ghcb", "mem_encrypt_init"),
    "bss_decrypted": RegionRule(("snp",), lambda sc: 2 * MiB, _one, 2 * MiB, "msr", "startup"),
    "ghcb": RegionRule(("snp",), lambda sc: PAGE, _vcpus, PAGE, "msr", "trap_init"),
    "percpu_decrypted": RegionRule(("snp",), lambda sc: PAGE, _vcpus, PAGE, "msr", "smp_prepare_boot_cpu"),
    "firmware_ghcb": RegionRule(("snp",), lambda sc: PAGE, _vcpus, PAGE, "ghcb", "firmware"),
    "atomic_pool": RegionRule(("snp", "tdx"), lambda sc: atomic_pool_size(sc.guest_mem), lambda sc: 3, PAGE,
                              "ghcb", "postcore_initcall"),
    "virtio_ring": RegionRule(("snp", "tdx"), lambda sc: 8 * KiB, lambda sc: sc.vcpus + 3, PAGE, "ghcb",
                              "device_initcall"),
    "kvmclock": RegionRule(("snp", "tdx"), lambda sc: -(-max(sc.vcpus - 64, 1) * 64 // PAGE) * PAGE,
                           lambda sc: 1 if sc.vcpus > 64 else 0, PAGE, "ghcb", "early_initcall"),
    "mmio_hole": RegionRule(("tdx",), None, _one, PAGE, "ghcb", "firmware", ram=False),
    "mmio_guard": RegionRule(("pkvm",), None, _one, PAGE, "ghcb", "device_initcall", ram=False),
    "custom": RegionRule(("snp", "tdx", "pkvm"), None, _one, PAGE, "ghcb", "late"),
}
