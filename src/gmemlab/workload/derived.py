"""Size rules and counts derived from a scenario's parameters (workloads.md §1.2, §1.3, §6; docs/placement.md).

Pure arithmetic, no events: what ``gmemlab scenarios describe`` prints and what the generators use to size
things, so both agree by construction. Each rule names the kernel (Linux v6.18), QEMU or OVMF code that
decides it; tests check them against the numbers worked by hand in §6 and docs/placement.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..level import Level
from .units import GiB, KiB, MiB

SWIOTLB_PERCENT = 6  # mem_encrypt_setup_arch: 6% of guest memory [src arch/x86/mm/mem_encrypt.c]
SWIOTLB_MIN = 64 * MiB  # IO_TLB_DEFAULT_SIZE
SWIOTLB_MAX = 1 * GiB  # SZ_1G clamp
SWIOTLB_ROUND = 256 * KiB  # swiotlb_adjust_size: IO_TLB_SEGSIZE (128) slabs of IO_TLB_SIZE (2 KiB)
TDX_MR_EXTEND_PER_PAGE = 16  # TDX_EXTENDMR_CHUNKSIZE = 256 B per TDH.MR.EXTEND (§1.3)
PSC_MAX_ENTRIES = 64  # VMGEXIT_PSC_MAX_ENTRY, guest side (§1.2)
OVMF_PSC_MAX_ENTRIES = 253  # SNP_PAGE_STATE_MAX_ENTRY: the GHCB shared buffer, OVMF side (docs/placement.md F2)
PMD = Level.PG_2M.bytes
Q35_LOWMEM_SPLIT = 0xB000_0000  # pc_q35_init: RAM >= 2.75 GiB puts only 2 GiB below 4 GiB
STRUCT_PAGE = 64  # sizeof(struct page) with SPARSEMEM_VMEMMAP (docs/placement.md A4)
PERCPU_UNIT = 512 * KiB  # [assumed] embedded first-chunk unit ("percpu: ... u524288", docs/placement.md §2)
HASH_TABLES_MAX = 32 * MiB  # [assumed] early hash tables ~ RAM/1024, capped (docs/placement.md §1.2 step 3)
GHCB_STRIDE = 12 * KiB  # struct sev_es_runtime_data: GHCB + backup GHCB + flags, page aligned (docs/placement.md §2)
ATOMIC_POOL_MAX = 4 * MiB  # kernel/dma/pool.c: MAX_ORDER_NR_PAGES
ATOMIC_POOL_MIN = 128 * KiB


def swiotlb_default_size(guest_mem: int) -> int:
    """The default x86 CoCo swiotlb (docs/placement.md §2): 6% of RAM clamped to [64 MiB, 1 GiB], aligned to a 256 KiB
    segment (``mem_encrypt_setup_arch``, ``swiotlb_adjust_size``), then rounded up to a power of two because
    ``swiotlb_init_remap`` sets one area per possible CPU and ``round_up_default_nslabs`` makes nslabs a
    power of two: 16 GiB -> 1 GiB, 4 GiB -> 256 MiB."""
    size = min(max(guest_mem * SWIOTLB_PERCENT // 100, SWIOTLB_MIN), SWIOTLB_MAX)
    size = -(-size // SWIOTLB_ROUND) * SWIOTLB_ROUND
    return 1 << (size - 1).bit_length()


def q35_low_top(ram: int) -> int:
    """RAM below 4 GiB on QEMU q35 (``pc_q35_init``): 2 GiB once RAM reaches 2.75 GiB, else all of it."""
    return 2 * GiB if ram >= Q35_LOWMEM_SPLIT else ram


KVM_SLOT_MAX_BYTES = ((1 << 31) - 1) * 4096  # QEMU: KVM_MEM_MAX_NR_PAGES pages, the host page mask


def memslots(ram: int) -> list[tuple[int, int]]:
    """QEMU's memslots for the RAM block, as ``(RAM offset, size)``: the part below 4 GiB, then the part
    above 4 GiB split into slots of at most ``KVM_SLOT_MAX_BYTES`` (``kvm_set_phys_mem``: 8 TiB - 4 KiB, so
    a slot boundary there is not huge-page aligned)."""
    low = q35_low_top(ram)
    out = [(0, low)]
    pos = low
    while pos < ram:
        size = min(ram - pos, KVM_SLOT_MAX_BYTES)
        out.append((pos, size))
        pos += size
    return out


def memmap_size(ram: int) -> int:
    """The early memmap buffer: 64 B of struct page per 4 KiB page, 2 MiB-aligned (``sparse_buffer_init``)."""
    return -(-(ram // 4096 * STRUCT_PAGE) // PMD) * PMD


def memblock_top_block(ram: int, cpus: int, ghcb: bool) -> int:
    """What memblock takes from the top of RAM during ``setup_arch`` .. ``trap_init`` (docs/placement.md §1.2 step 3):
    the memmap, the per-CPU areas [assumed unit], the early hash tables [assumed] and, on SNP, the GHCB data."""
    size = memmap_size(ram) + cpus * PERCPU_UNIT + min(ram // 1024, HASH_TABLES_MAX)
    if ghcb:
        size += cpus * GHCB_STRIDE
    return -(-size // PMD) * PMD


def atomic_pool_size(ram: int) -> int:
    """One DMA atomic pool (``dma_atomic_pool_init``): 128 KiB per GiB of RAM within [128 KiB, 4 MiB],
    allocated as one naturally aligned block of the next power of two."""
    size = max(ATOMIC_POOL_MIN, min(ram // (GiB // (128 * KiB)), ATOMIC_POOL_MAX))
    return 1 << (size - 1).bit_length()


def wmark_promo(ram: int, zone: int) -> int:
    """The promo watermark of a zone of ``zone`` bytes in a guest of ``ram`` bytes (docs/placement.md A7).

    ``min_free_kbytes = clamp(sqrt(16 * lowmem_kB), 128, 262144)``, raised to THP's recommended minimum
    (``set_recommended_min_free_kbytes``: 11 pageblocks per populated zone, two zones [assumed], at most 5% of
    RAM); the zone's share of it is ``min``; then ``promo = min + 3 * max(min / 4, zone * 10 / 10000)``
    (``__setup_per_zone_wmarks``, ``watermark_scale_factor`` = 10).
    """
    kb = ram // 1024
    min_free = min(max(math.isqrt(16 * kb), 128), 262144) * 1024
    thp = min(2 * 11 * PMD, ram // 20)
    min_free = max(min_free, thp)
    zone_min = min_free * zone // max(ram, 1)
    return zone_min + 3 * max(zone_min // 4, zone * 10 // 10000)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class AcceptPlan:
    """How much memory is accepted when (docs/placement.md §1), in bytes of RAM.

    ``firmware``: what the firmware accepts below it (OVMF: all RAM below 4 GiB; all of it with an eager
    firmware); ``storm``: what the boot vCPU accepts before the watermarks exist; ``boot``: what the page
    allocator accepts during the rest of boot (memory used + the promo watermark); ``total``: all memory
    accepted by the end of the run. Memblock allocations (the top block, shared regions) accept their own
    units besides. Each lazy step is one ``chunk`` (4 MiB MAX_ORDER block).
    """

    chunk: int
    firmware: int
    storm: int
    boot: int
    total: int

    @property
    def chunks_total(self) -> int:
        return ceil_div(max(self.total - self.firmware, 0), self.chunk)

    @property
    def chunks_boot(self) -> int:
        return ceil_div(min(self.storm + self.boot, max(self.total - self.firmware, 0)), self.chunk)

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
