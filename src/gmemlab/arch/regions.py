"""Where Linux and OVMF put the shared regions (docs/placement.md §2, §2.1; sizes and timing in
:mod:`gmemlab.workload.regions`).

:class:`Placer` answers "where is instance ``i`` of this region" for each rule, in RAM offsets
(:mod:`gmemlab.arch.layout`):

* **memblock items are deterministic, at the top of RAM** (memblock is top-down on x86,
  ``memblock_alloc_range_nid``): ``setup_arch`` takes the memmap (``sparse_buffer_init``: RAM/64) from the
  very top, then the per-CPU areas (``setup_per_cpu_areas``, one unit per CPU [assumed 512 KiB]) and the
  early hash tables below it; ``trap_init`` -> ``sev_es_init_vc_handling`` -> ``alloc_runtime_data`` puts one
  12 KiB ``sev_es_runtime_data`` per CPU below those, CPU 0 highest. So the GHCB pages are a descending
  array just under the top block, and each CPU's ``.data..percpu..decrypted`` page starts its per-CPU unit.
* **the swiotlb** is ``memblock_alloc_low``: top-down below 4 GiB (``swiotlb_memblock_alloc`` without
  ``SWIOTLB_ANY``), under the firmware's and the initrd's reservations at the top of low RAM [assumed gap:
  64 MiB + 0..511 pages]; it halves and retries when it does not fit (``swiotlb_init_remap``).
* **.bss..decrypted** is part of the kernel image, loaded at the lowest fit >= 16 MiB without KASLR
  (``efi_random_alloc``); the section sits after the image's text and data [assumed: at 48 MiB].
* **OVMF's GHCB pages** are PEI reservations near the top of low RAM (``AmdSevEsInitialize``), 2 pages per CPU.
* **buddy items** (atomic pools, virtio rings, kvmclock) come from accepted memory at the low end of
  ZONE_NORMAL, just above 4 GiB [assumed ``low_normal``: uniform within max(64 MiB, what is accepted there)];
  the DMA32 pool from below 4 GiB and the DMA pool from below 16 MiB.

Every rule can be replaced by an explicit ``location`` (``low``, ``top``, ``low_normal``, ``scattered``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..level import Level
from ..uapi import PAGE_SIZE
from ..workload.derived import HASH_TABLES_MAX, PERCPU_UNIT, memmap_size
from ..workload.scenario import Scenario, SharedRegion
from ..workload.units import KiB, MiB
from .acceptance import Acceptance
from .layout import Layout, PlacementError, align_down

SWIOTLB_GAP = 64 * MiB  # [assumed] OVMF ACPI/runtime/boot-services areas + initrd at the top of low RAM
SWIOTLB_GAP_PAGES = 511  # [assumed] plus 0..511 pages: the swiotlb is 4 KiB- but not 2 MiB-aligned
KERNEL_LOAD = 16 * MiB  # CONFIG_PHYSICAL_START, no KASLR
KERNEL_BSS_DECRYPTED = 48 * MiB  # [assumed] 16 MiB load address + ~32 MiB of kernel text and data
DMA_ZONE_TOP = 16 * MiB  # ZONE_DMA
LOW_NORMAL_MIN = 64 * MiB  # [assumed] window of boot-time buddy allocations above 4 GiB
FIRMWARE_GHCB_STRIDE = 8 * KiB  # AmdSevEsInitialize: 2 pages per CPU, the first one shared
GHCB_STRIDE = 12 * KiB  # sizeof(struct sev_es_runtime_data) rounded to pages
PMD = Level.PG_2M.bytes  # memblock items of the top block are 2 MiB-aligned
ATOMIC_POOL_ZONES = ("normal", "dma32", "dma")  # dma_atomic_pool_init: KERNEL, DMA32, DMA


class Placer:
    """Places region instances in a :class:`Layout`; see the module docstring."""

    def __init__(self, sc: Scenario, layout: Layout, acceptance: Acceptance, rng: random.Random,
                 slack: random.Random) -> None:
        self.sc = sc
        self.layout = layout
        self.acceptance = acceptance
        self.rng = rng
        self.slack = slack
        # early_reserve_memory (arch/x86/kernel/setup.c): the kernel image, and the first 1 MiB of RAM
        layout.reserve(0, 1 * MiB)
        layout.reserve(KERNEL_LOAD, min(KERNEL_BSS_DECRYPTED, sc.guest_mem))
        self._top_block(sc.guest_mem)
        self._firmware_ghcb: int | None = None

    def _top_block(self, memmap_end: int) -> None:
        mem = self.sc.guest_mem
        self.memmap_end = memmap_end
        self.memmap_start = memmap_end - memmap_size(mem)
        self.percpu_start = self.memmap_start - self.sc.vcpus * PERCPU_UNIT
        self.ghcb_top = self.percpu_start - min(mem // 1024, HASH_TABLES_MAX)
        ghcb_data = self.sc.vcpus * GHCB_STRIDE if self.sc.arch == "snp" else 0
        self.top_block_start = align_down(self.ghcb_top - ghcb_data, PMD)

    def reserve_top_block(self) -> tuple[int, int]:
        """``setup_arch``: memblock takes the memmap from the top of free RAM (below what the firmware
        reserved, in a small guest), the rest of the top block below it; returns the block's range."""
        size = memmap_size(self.sc.guest_mem)
        start = self.layout.top_down(size, PMD, self.sc.guest_mem)
        self._top_block(start + size)
        return self.top_block_start, self.memmap_end

    # -- generic placements (also the explicit alternatives) ------------------------------------------
    def low(self, size: int, align: int) -> int:
        """Top-down below 4 GiB (``memblock_alloc_low``)."""
        return self.layout.top_down(size, align, self.layout.low_top)

    def top(self, size: int, align: int) -> int:
        """Top-down from the top of RAM (``memblock_alloc``)."""
        return self.layout.top_down(size, align, self.sc.guest_mem)

    def low_normal(self, size: int, align: int) -> int:
        """A boot-time buddy allocation: accepted ZONE_NORMAL memory just above 4 GiB [assumed]."""
        lo = self.layout.low_top
        if lo >= self.sc.guest_mem:  # no memory above 4 GiB: the buddy allocator hands out low memory
            return self.scattered(size, align)
        hi = max(self.acceptance.frontier, lo + LOW_NORMAL_MIN)
        if size & (size - 1) == 0:
            align = max(align, size)  # alloc_pages(order): naturally aligned
        return self.layout.scattered(size, align, lo, hi, self.rng)

    def scattered(self, size: int, align: int) -> int:
        """Uniform over all RAM (an explicit alternative; no allocator does this)."""
        return self.layout.scattered(size, align, 0, self.sc.guest_mem, self.rng)

    def at(self, start: int, size: int, align: int) -> int:
        """Exactly at ``start`` if free, else the closest top-down fit below it."""
        if start >= 0 and start + size <= self.sc.guest_mem and self.layout.overlap(start, start + size) is None:
            self.layout.reserve(start, start + size)
            return start
        return self.layout.top_down(size, align, max(start + size, size))

    # -- the rules ---------------------------------------------------------------------------------
    def place(self, region: SharedRegion, index: int, size: int, align: int) -> int:
        """Start of instance ``index`` of ``region`` (raises :class:`PlacementError`)."""
        loc = region.location
        if loc == "low":
            return self.low(size, align)
        if loc == "top":
            return self.top(size, align)
        if loc == "low_normal":
            return self.low_normal(size, align)
        if loc == "scattered":
            return self.scattered(size, align)
        rule: Callable[[int, int, int], int] = getattr(self, f"_rule_{region.rule}")
        return rule(index, size, align)

    def _rule_swiotlb(self, index: int, size: int, align: int) -> int:
        below = self.layout.low_top - SWIOTLB_GAP - self.slack.randint(0, SWIOTLB_GAP_PAGES) * PAGE_SIZE
        if below < size:  # a small guest: under whatever the firmware leaves at the top of RAM
            below = self.layout.low_top - self.slack.randint(1, SWIOTLB_GAP_PAGES) * PAGE_SIZE
        return self.layout.top_down(size, align, below)

    def _rule_bss_decrypted(self, index: int, size: int, align: int) -> int:
        return self.at(KERNEL_BSS_DECRYPTED, size, align)

    def _rule_ghcb(self, index: int, size: int, align: int) -> int:
        return self.at(self.ghcb_top - (index + 1) * GHCB_STRIDE, size, align)

    def _rule_percpu_decrypted(self, index: int, size: int, align: int) -> int:
        return self.at(self.percpu_start + index * PERCPU_UNIT, size, align)

    def _rule_firmware_ghcb(self, index: int, size: int, align: int) -> int:
        if self._firmware_ghcb is None:
            block = self.sc.vcpus * FIRMWARE_GHCB_STRIDE
            self._firmware_ghcb = self.layout.top_down(block, PAGE_SIZE, self.layout.low_top - 16 * MiB)
            self.layout.release(self._firmware_ghcb)  # the pages are reserved one by one below
        return self.at(self._firmware_ghcb + index * FIRMWARE_GHCB_STRIDE, size, align)

    def _rule_atomic_pool(self, index: int, size: int, align: int) -> int:
        zone = ATOMIC_POOL_ZONES[index % len(ATOMIC_POOL_ZONES)]
        natural = max(size, align)
        if zone == "normal":
            return self.low_normal(size, natural)
        hi = DMA_ZONE_TOP if zone == "dma" else self.layout.low_top
        lo = 1 * MiB if zone == "dma" else DMA_ZONE_TOP
        return self.layout.scattered(size, natural, lo, hi, self.rng)  # [assumed] uniform in the zone

    def _rule_virtio_ring(self, index: int, size: int, align: int) -> int:
        return self.low_normal(size, max(size, align))

    def _rule_kvmclock(self, index: int, size: int, align: int) -> int:
        return self.low_normal(size, align)

    def _rule_custom(self, index: int, size: int, align: int) -> int:
        return self.scattered(size, align)


def top_block_start(sc: Scenario) -> int:
    """Start of what memblock takes from the top of RAM by ``trap_init`` (docs/placement.md §1.2 step 3)."""
    from ..workload.derived import memblock_top_block

    return align_down(sc.guest_mem - memblock_top_block(sc.guest_mem, sc.vcpus, sc.arch == "snp"), PMD)


__all__ = ["PlacementError", "Placer", "top_block_start"]
