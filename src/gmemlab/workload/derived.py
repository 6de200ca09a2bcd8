"""Size rules and counts derived from a scenario's parameters (workloads.md §1.2, §1.3, §6).

Pure arithmetic, no events: what ``gmemlab scenarios describe`` prints and what the generators use to size
things, so both agree by construction. Tests check these against the §6 numbers worked by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from .units import GiB, KiB, MiB

SWIOTLB_PERCENT = 6  # mem_encrypt_setup_arch: 6% of guest memory [src arch/x86/mm/mem_encrypt.c]
SWIOTLB_MIN = 64 * MiB  # IO_TLB_DEFAULT_SIZE
SWIOTLB_MAX = 1 * GiB  # SZ_1G clamp
SWIOTLB_ROUND = 256 * KiB  # swiotlb_adjust_size: IO_TLB_SEGSIZE (128) slabs of IO_TLB_SIZE (2 KiB)
PSC_MAX_ENTRIES = 64  # VMGEXIT_PSC_MAX_ENTRY, guest side (§1.2)
PMD = 2 * MiB


def swiotlb_default_size(guest_mem: int) -> int:
    """6% of guest memory clamped to [64 MiB, 1 GiB], rounded up to a 256 KiB segment (§1.2, §6)."""
    size = min(max(guest_mem * SWIOTLB_PERCENT // 100, SWIOTLB_MIN), SWIOTLB_MAX)
    return -(-size // SWIOTLB_ROUND) * SWIOTLB_ROUND


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class AcceptPlan:
    """How much memory is accepted when, in ``chunk`` units (§1.2 lazy acceptance, §5.2 ``accept``).

    ``early`` is accepted by the firmware, ``storm`` by the boot vCPU before the zone watermarks exist
    (dstack #1220), ``boot`` is everything accepted by the end of boot (early and storm included) and
    ``total`` everything ever accepted. Each chunk is one accept_memory() call of ``chunk`` bytes (the last
    may be shorter).
    """

    chunk: int
    early: int
    storm: int
    boot: int
    total: int

    @property
    def chunks_total(self) -> int:
        return ceil_div(self.total, self.chunk)

    @property
    def chunks_boot(self) -> int:
        return ceil_div(self.boot, self.chunk)

    @property
    def chunks_runtime(self) -> int:
        return self.chunks_total - self.chunks_boot


def snp_psc_counts(size: int, aligned_2m: bool) -> tuple[int, int, int]:
    """(2M entries, 4K entries, VMGEXITs) for converting ``size`` bytes with the GHCB protocol (§6).

    For an unaligned start this is the worst case of the §6 row: the head and tail go 4K, at most one
    2M entry fewer.
    """
    if aligned_2m:
        e2m, e4k = size // PMD, (size % PMD) // 4096
    else:
        e2m = max(size // PMD - 1, 0)
        e4k = (size - e2m * PMD) // 4096
    return e2m, e4k, ceil_div(e2m + e4k, PSC_MAX_ENTRIES)
