"""The generic guest lifecycle as an event flow: launch, firmware, boot, runtime, teardown (workloads.md §1;
docs/placement.md §1 for the order of acceptance, §2 for the shared regions).

:class:`Lifecycle` decides *when* and *where* things happen; the :class:`GuestArch` decides *how* (the
architecture's event flow). Everything is a lazy generator: memory follows the number of allocations
(shared regions, runtime buffers), never the guest size, and the number of events follows the number of
accepted blocks and conversions, not the number of pages. Addresses are RAM offsets
(:mod:`gmemlab.arch.layout`).

Order (Linux v6.18 ``start_kernel``, OVMF; other arches skip what they lack):

* **launch** (the VMM alone): CREATE_GMEM, bind, SET_ATTR(all, private) if the VMM does (QEMU does for CoCo),
  FALLOC if preallocating, the payload (kvm_gmem_populate, mmap in place, or plain VMM writes; payload in
  the firmware flash below 4 GiB is a separate guest_memfd and leaves RAM alone), launch finish.
* **firmware**: pKVM's donation of the payload; the firmware's acceptance of all RAM below 4 GiB (OVMF:
  SNP PEI on the boot vCPU, docs/placement.md F1/F2; TDX SEC on every vCPU in 32 MiB chunks, F4), or of all RAM
  (``accept.firmware = all``); the firmware's own shared pages (OVMF's GHCBs on SNP, TDX's MMIO hole).
* **boot** (the kernel on the boot vCPU, through the initcalls): the regions in their kernel order
  (``.bss..decrypted`` at startup; the memblock top block accepted in ``setup_arch``; per-CPU decrypted
  pages; GHCBs in ``trap_init``; the swiotlb in ``mem_encrypt_init``; kvmclock as an early initcall); the
  pre-watermark acceptance during SMP bring-up (A8); atomic pools (postcore), virtio rings (device
  initcalls); lazy acceptance of what the boot allocates plus the promo watermark (A6, A7); the unused
  tail of ``.bss..decrypted`` made private again in ``free_initmem``.
* **smp** (every vCPU): ``accept_memory=eager`` accepts everything in the parallel deferred
  struct-page-init workers (A9).
* **runtime**: the guest touches its memory (``guest_touch``), the host maps the shared pool and pins it,
  then one :class:`Tick` per simulated second with that second's share of lazy acceptance, runtime
  conversions and scattered host writes.
* **teardown**: unpin, then punch the whole file (close + truncate, §1.1 step 6).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from ..errors import UsageError
from ..level import Level
from ..uapi import PAGE_SIZE
from ..workload.derived import memslots
from ..workload.events import (
    CreateGmem,
    Event,
    Falloc,
    GmemConvert,
    GuestFault,
    HostWrite,
    Phase,
    PhaseMark,
    PinUserPages,
    Populate,
    Punch,
    SetAttr,
    SetMemoryRegion,
    Tick,
    UnpinUserPages,
    repeated,
)
from ..workload.scenario import Scenario, SharedRegion
from ..workload.units import GiB, KiB, MiB, format_size
from .acceptance import Acceptance
from .base import GuestArch
from .layout import Layout, PlacementError, align_down
from .regions import Placer

# Runtime DMA buffers with "low_memory_biased" locality land below 4 GiB this often [assumed].
LOW_BIAS = 0.8
BSS_DECRYPTED_USED = 12 * KiB  # boot_ghcb_page, hv_clock_boot, wall_clock stay shared (docs/placement.md §2)
TDX_FIRMWARE_CHUNK = 32 * MiB  # OVMF SEC ACCEPT_CHUNK_SIZE, strided over the vCPUs (docs/placement.md F4)
FIRMWARE_FLASH_TOP = 4 * GiB
IO_TLB_SEGMENT = 128 * 2 * KiB  # IO_TLB_SEGSIZE slabs of 1 << IO_TLB_SHIFT bytes
IO_TLB_MIN = 1 * MiB  # IO_TLB_MIN_SLABS  # payload GPAs in [low_top, 4 GiB) are the flash, not RAM


class Lifecycle:
    def __init__(self, sc: Scenario, guest: GuestArch, seed: int) -> None:
        self.sc = sc
        self.guest = guest
        # One stream per purpose, so e.g. the swiotlb's offset does not depend on how many draws placing
        # the rings took (which varies with the vCPU count).
        self.rng_place = random.Random(f"{seed}:place")
        self.rng_slack = random.Random(f"{seed}:slack")
        self.rng_runtime = random.Random(f"{seed}:runtime")  # what happens (sizes, choices)
        self.rng_where = random.Random(f"{seed}:where")  # where it lands (draws vary with the guest size)
        self.layout = Layout(sc.guest_mem)
        self.plan = sc.accept_plan()
        origin = self.layout.low_top if sc.accept.firmware == "below_4g" else sc.guest_mem
        self.acceptance = Acceptance(sc.guest_mem, sc.accept.chunk, sc.accept.unit, origin,
                                     enabled=sc.accept.mode != "none")
        self.placer = Placer(sc, self.layout, self.acceptance, self.rng_place, self.rng_slack)
        self.payload: list[tuple[int, int]] = []
        self.pool: list[tuple[int, int]] = []  # shared ranges the host maps (host_access.pattern = pool)
        self.pins: list[tuple[int, int]] = []
        self.bss_decrypted: tuple[int, int] | None = None
        self.host_phase = 0  # offset of the scattered host-write pattern, drawn at runtime start

    def events(self) -> Iterator[Event]:
        yield from self.launch()
        yield from self.firmware()
        yield from self.boot()
        if self.sc.accept.mode == "eager":
            yield from self.smp()
        # evaluated after boot: a guest that never runs (attr-init-1t) has no runtime phase
        if (self.sc.runtime_s or self.accepted_total() < self.plan.total or self.sc.host_access.pattern != "none"
                or self.sc.guest_touch.fraction_of_mem):
            yield from self.runtime()
        if self.sc.teardown:
            yield from self.teardown()

    # --- helpers -----------------------------------------------------------------------------------

    def _fail(self, key: str, reason: str) -> UsageError:
        return UsageError(f"{self.sc.source or self.sc.name}: {key}: {reason}")

    def _accept(self, chunks: Iterable[tuple[int, int]]) -> Iterator[Event]:
        for start, end in chunks:
            yield from self.guest.accept(start, end)

    def _accept_runs(self, runs: Iterable[tuple[int, int, int]]) -> Iterator[Event]:
        """Lazy steps (:meth:`Acceptance.advance_runs`): a run of identical calls as one :class:`Repeat`."""
        guest, stride = self.guest, self.acceptance.chunk
        for start, end, times in runs:
            def call(d: int, s: int = start, e: int = end) -> Iterator[Event]:
                return guest.accept(s + d, e + d)
            yield from repeated(call, times, stride)

    def accepted_total(self) -> int:
        return self.sc.guest_mem - self.acceptance.unaccepted() if self.acceptance.enabled else 0

    def _accept_until(self, total: int) -> Iterator[Event]:
        """Lazy steps until ``total`` bytes of RAM are accepted."""
        need = total - self.accepted_total()
        if need > 0:
            yield from self._accept_runs(self.acceptance.advance_runs(self.acceptance.accepted + need))

    def _ram_offset(self, gpa: int, size: int) -> int | None:
        """The RAM offset of a payload GPA (q35: GPA 4 GiB is offset ``low_top``), None for the flash."""
        low_top = self.layout.low_top
        if gpa + size <= low_top:
            return gpa
        if gpa >= FIRMWARE_FLASH_TOP:
            return gpa - FIRMWARE_FLASH_TOP + low_top
        return None

    def _place_payload(self, index: int, gpa: int | None, size: int) -> tuple[int, int] | None:
        try:
            if gpa is None:  # a firmware volume with no address: top-down below 4 GiB
                start = self.layout.top_down(size, PAGE_SIZE, self.layout.low_top)
                return start, start + size
            offset = self._ram_offset(gpa, size)
            if offset is None:
                return None
            start = offset
            if start + size > self.sc.guest_mem or self.layout.overlap(start, start + size):
                start = self.layout.top_down(size, PAGE_SIZE, self.layout.low_top)
            else:
                self.layout.reserve(start, start + size)
            return start, start + size
        except PlacementError as exc:
            raise self._fail(f"populate.ranges[{index}]", str(exc)) from None

    def _regions(self, *when: str) -> list[SharedRegion]:
        return [r for r in self.sc.shared_regions if r.kind.when in when]

    # --- phases --------------------------------------------------------------------------------------

    def launch(self) -> Iterator[Event]:
        sc = self.sc
        yield PhaseMark(Phase.LAUNCH)
        yield CreateGmem(sc.guest_mem, sc.gmem_flags.init == "shared", sc.gmem_flags.mmap,
                         sc.backing.allocator, sc.backing.page, sc.no_direct_map)
        slots = memslots(sc.guest_mem)
        for i, (offset, size) in enumerate(slots):  # q35: below and above 4 GiB, <= 8 TiB each
            yield SetMemoryRegion(slot=i, gpa=offset, size=size, gmem_offset=offset)
        if sc.set_attr_private:  # QEMU kvm_set_phys_mem: per memslot
            for offset, size in slots:
                yield SetAttr(offset, offset + size, private=True)
        if sc.populate.prealloc:
            yield Falloc(0, sc.guest_mem)
        yield from self.populate()
        yield from self.guest.launch_finish()

    def populate(self) -> Iterator[Event]:
        """§1.2 (a) kvm_gmem_populate, (b) mmap in place; §1.1 VMM writes; §1.4 write then donate.

        Payload in RAM is validated/accepted by being populated (SNP_LAUNCH_UPDATE, TDH.MEM.PAGE.ADD), so the
        firmware skips it (docs/placement.md F2). Payload in the firmware flash (GPAs between the top of low RAM
        and 4 GiB) lives in the flash's own guest_memfd: populated (and priced), not part of RAM.
        """
        pop = self.sc.populate
        file_shared = self.sc.gmem_flags.init == "shared"
        for i, rng in enumerate(pop.ranges):
            placed = self._place_payload(i, rng.gpa, rng.size)
            if placed is None:
                assert rng.gpa is not None
                if pop.method in ("gmem_populate", "mmap_inplace"):
                    yield Populate(rng.gpa, rng.gpa + rng.size, rng.type, rng.measure,
                                   in_place=pop.method == "mmap_inplace", rom=True)
                continue
            start, end = placed
            self.payload.append((start, end))
            self.acceptance.mark(start, end)
            if pop.method == "gmem_populate":
                yield Populate(start, end, rng.type, rng.measure)
            elif pop.method == "vmm_write":
                yield HostWrite(start, end)
            else:  # mmap_inplace, vmm_write_then_donate: convert to shared, write, convert back
                if not file_shared:
                    yield GmemConvert(start, end, to_shared=True)
                yield HostWrite(start, end)
                yield GmemConvert(start, end, to_shared=False)
                if pop.method == "mmap_inplace":
                    yield Populate(start, end, rng.type, rng.measure, in_place=True)
        if pop.method == "mmap_inplace" and file_shared and pop.convert_rest_to_private == "late":
            yield GmemConvert(0, self.sc.guest_mem, to_shared=False)

    def firmware(self) -> Iterator[Event]:
        """OVMF: accept (SNP: validate) RAM below 4 GiB, or all of it; the firmware's own shared pages."""
        cpus = self.sc.vcpus if self.guest.name == "tdx" else 1  # TDX SEC accepts on every vCPU (F4)
        yield PhaseMark(Phase.FIRMWARE, cpus)
        yield from self.guest.boot_start(self.payload)
        for start, end in self.acceptance.take(0, self.plan.firmware):
            yield from self.guest.firmware_accept(start, end)
        for region in self._regions("firmware"):
            yield from self.shared_region(region)

    def boot(self) -> Iterator[Event]:
        """The kernel on the boot vCPU, from startup through the initcalls (see the module docstring)."""
        sc, plan = self.sc, self.plan
        yield PhaseMark(Phase.BOOT)
        for region in self._regions("startup"):
            yield from self.shared_region(region)
        if self.acceptance.enabled:  # setup_arch: memblock takes the memmap and more from the top (A3, A4)
            try:
                yield from self._accept(self.acceptance.accept(*self.placer.reserve_top_block()))
            except PlacementError as exc:
                raise self._fail("guest_mem", f"no room for the kernel's memmap: {exc}") from None
        for when in ("smp_prepare_boot_cpu", "trap_init", "mem_encrypt_init", "early_initcall"):
            for region in self._regions(when):
                yield from self.shared_region(region)
        if sc.accept.mode == "lazy":  # smp_init: every allocation accepts a block until the watermarks (A8)
            yield from self._accept_runs(self.acceptance.advance_runs(self.acceptance.accepted + plan.storm))
        for when in ("postcore_initcall", "device_initcall", "late"):
            for region in self._regions(when):
                yield from self.shared_region(region)
        if sc.accept.mode == "lazy":  # what the boot allocates, plus the promo watermark kept accepted (A7)
            yield from self._accept_runs(self.acceptance.advance_runs(self.acceptance.accepted + plan.boot))
        if self.bss_decrypted is not None:  # free_initmem -> mem_encrypt_free_decrypted_mem
            start, end = self.bss_decrypted
            used = BSS_DECRYPTED_USED
            yield from self.guest.to_private(start + used, end)

    def smp(self) -> Iterator[Event]:
        """``accept_memory=eager``: the deferred struct-page-init workers accept as they free (A9)."""
        yield PhaseMark(Phase.SMP, self.sc.vcpus)
        yield from self._accept_until(self.plan.total)

    def shared_region(self, region: SharedRegion) -> Iterator[Event]:
        """Place each instance, accept its units (the allocation, A3), make it shared (docs/placement.md §2)."""
        sc = self.sc
        size, align = sc.region_size(region), sc.region_align(region)
        for i in range(sc.region_count(region)):
            if not region.ram:
                start = self.layout.outside_ram(size, align)
                yield from self.guest.map_device(start, start + size, region.granule)
                continue
            start, size, align = self._place(region, i, size, align)
            yield from self._accept(self.acceptance.accept(start, start + size))
            yield from self.guest.to_shared(start, start + size, msr=region.msr, granule=region.granule)
            if region.rule == "bss_decrypted" and self.bss_decrypted is None:
                self.bss_decrypted = (start, start + size)
            if region.pool:
                self.pool.append((start, start + size))

    def _place(self, region: SharedRegion, index: int, size: int, align: int) -> tuple[int, int, int]:
        """Instance ``index`` of ``region``: (start, size, align). The swiotlb halves until memblock finds
        room, to a multiple of IO_TLB_SEGSIZE slabs and not below IO_TLB_MIN_SLABS (``swiotlb_init_remap``);
        an alignment larger than the halved size follows it down (the largest power of two that fits)."""
        while True:
            try:
                return self.placer.place(region, index, size, align), size, align
            except PlacementError as exc:
                if region.rule != "swiotlb" or size <= IO_TLB_MIN:
                    raise self._fail(f"shared_regions.{region.name}",
                                     f"cannot place {format_size(size)}: {exc}") from None
                size = max(IO_TLB_MIN, -(-(size // 2) // IO_TLB_SEGMENT) * IO_TLB_SEGMENT)
                align = min(align, 1 << (size.bit_length() - 1))

    def runtime(self) -> Iterator[Event]:
        sc = self.sc
        yield PhaseMark(Phase.RUNTIME)
        touched = align_down(int(sc.guest_touch.fraction_of_mem * sc.guest_mem), Level.PG_2M.bytes)
        if touched:
            yield GuestFault(0, touched)
        yield from self.host_pool_access()
        seconds = sc.runtime_s
        base = self.accepted_total()
        remaining = max(self.plan.total - base, 0)
        churn = self.churn_site() if sc.runtime_churn.rate_per_s else None
        for second in range(seconds):
            yield Tick(second)
            yield from self._accept_until(base + remaining * (second + 1) // seconds)
            if churn is not None:
                rate = sc.runtime_churn.rate_per_s
                for _ in range(int((second + 1) * rate) - int(second * rate)):
                    yield from next(churn)
            yield from self.scattered_host_writes(second, seconds)
        if not seconds:
            yield from self._accept_until(self.plan.total)
            yield from self.scattered_host_writes(0, 1)

    def host_pool_access(self) -> Iterator[Event]:
        """DPDK/vhost or device models mapping the shared pool, optionally pinning it (§1.5, §5.7)."""
        access = self.sc.host_access
        if access.pattern != "pool":
            return
        for start, end in self.pool:
            pinned = align_down(int((end - start) * access.pins.fraction), PAGE_SIZE)
            if pinned:
                yield PinUserPages(start, start + pinned, access.pins.longterm)
                self.pins.append((start, start + pinned))
            touched = align_down(int((end - start) * access.touched_fraction), PAGE_SIZE)
            if touched:
                yield HostWrite(start, start + touched)

    def scattered_host_writes(self, second: int, seconds: int) -> Iterator[Event]:
        """``scattered_4k``: one 4K page every ``4K / touched_fraction`` bytes, this second's slice (§5.1)."""
        access = self.sc.host_access
        if access.pattern != "scattered_4k" or not access.touched_fraction:
            return
        stride = max(PAGE_SIZE, round(PAGE_SIZE / access.touched_fraction / PAGE_SIZE) * PAGE_SIZE)
        if second == 0:
            self.host_phase = self.rng_runtime.randrange(stride // PAGE_SIZE) * PAGE_SIZE
        lo = align_down(self.sc.guest_mem * second // seconds, stride) + self.host_phase
        hi = align_down(self.sc.guest_mem * (second + 1) // seconds, stride) + self.host_phase
        hi = min(hi, self.sc.guest_mem)
        if lo < hi:
            yield HostWrite(lo, hi, stride=stride)

    def churn_site(self) -> Iterator[Iterator[Event]]:
        """Endless runtime conversions (§1.2 Runtime, §5.8 churn-pingpong), one flow per ``next()``."""
        churn = self.sc.runtime_churn
        if churn.pattern == "pingpong":
            page = self._pingpong_page()
            while True:
                yield self._flip(page, page + PAGE_SIZE)
        sizes = [size for size, _ in churn.size_dist]
        weights = [p for _, p in churn.size_dist]
        while True:
            size = self.rng_runtime.choices(sizes, weights)[0]
            yield self._dma_buffer(size)

    def _flip(self, start: int, end: int) -> Iterator[Event]:
        yield from self._accept(self.acceptance.accept(start, end))
        yield from self.guest.to_shared(start, end)
        yield from self.guest.to_private(start, end)

    def _dma_buffer(self, size: int) -> Iterator[Event]:
        """dma_alloc_coherent (naturally aligned, to shared) then dma_free_coherent (to private).

        The buddy allocator hands out memory it already accepted: ``accepted_normal`` buffers land in
        ZONE_NORMAL below the acceptance frontier [assumed uniform there, docs/placement.md §2.1], except next to the
        pool (``neighbour_of_pool``); ``low_memory_biased`` and ``uniform`` are explicit alternatives.
        """
        churn, rng, where = self.sc.runtime_churn, self.rng_runtime, self.rng_where
        low_top = self.layout.low_top
        frontier = self.acceptance.frontier if self.acceptance.enabled else self.sc.guest_mem
        lo, hi = 0, max(frontier, low_top)
        if self.pool and rng.random() < churn.neighbour_of_pool:
            folio = self.sc.backing.page
            pool_start, _ = rng.choice(self.pool)
            lo = align_down(pool_start, folio)
            hi = min(lo + folio, self.sc.guest_mem)
        elif churn.locality == "accepted_normal" and frontier > low_top:
            lo, hi = low_top, frontier  # coherent buffers of 64-bit devices: accepted ZONE_NORMAL (§2.1)
        elif churn.locality == "low_memory_biased" and rng.random() < LOW_BIAS:
            hi = low_top
        elif churn.locality == "uniform":
            hi = self.sc.guest_mem
        try:
            start = self.layout.scattered(size, size, lo, hi, where)
        except PlacementError:
            try:
                start = self.layout.scattered(size, size, 0, self.sc.guest_mem, where)
            except PlacementError as exc:
                reason = f"no room for a {format_size(size)} buffer: {exc}"
                raise self._fail("runtime_churn.size_dist", reason) from None
        yield from self._flip(start, start + size)
        self.layout.release(start)

    def _pingpong_page(self) -> int:
        """A page in the highest backing folio holding no other reservation (an otherwise private folio);
        in a guest too small for one, any free page."""
        folio = self.sc.backing.page
        base = self.layout.highest_free(folio, folio)
        lo, hi = (base, base + folio) if base is not None else (0, self.sc.guest_mem)
        return self.layout.scattered(PAGE_SIZE, PAGE_SIZE, lo, hi, self.rng_where)

    def teardown(self) -> Iterator[Event]:
        yield PhaseMark(Phase.TEARDOWN)
        for start, end in self.pins:
            yield UnpinUserPages(start, end)
        yield Punch(0, self.sc.guest_mem)
