"""The generic guest lifecycle as an event flow: launch, boot, runtime, teardown (workloads.md §1).

:class:`Lifecycle` decides *when* and *where* things happen; the :class:`GuestArch` decides *how* (the
architecture's event flow). Everything is a lazy generator: memory follows the number of allocations
(shared regions, runtime buffers), never the guest size, and the number of events follows the number of
accepted chunks and conversions, not the number of pages.

Order (§1.2 is the template; other arches skip what they lack):

* launch: CREATE_GMEM, bind the memslot, SET_ATTR(all, private) if the VMM does (QEMU does for CoCo),
  FALLOC if preallocating, the payload (kvm_gmem_populate, mmap in place, or plain VMM writes), launch
  finish.
* firmware (boot vCPU): arch boot start (pKVM donation of the payload), the firmware's acceptance
  (``early_accepted``);
* boot (boot vCPU, kernel before SMP): the pre-watermark acceptance storm (dstack #1220), shared regions in
  file order (each allocation accepts its own chunks first, like memblock does);
* smp (every vCPU): guest first touches, then lazy acceptance up to ``accepted_at_boot_end`` (eager:
  everything) [assumed: accepted by allocations spread over the vCPUs].
* runtime: host access to the shared pool and pins, then one :class:`Tick` per simulated second with that
  second's share of lazy acceptance, runtime conversions and scattered host writes.
* teardown: unpin, then punch the whole file (close + truncate, §1.1 step 6).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from ..errors import UsageError
from ..uapi import PAGE_SIZE, PMD_SIZE
from ..workload.events import (
    CreateGmem,
    Event,
    Falloc,
    GmemConvert,
    GuestFault,
    HostWrite,
    Phase,
    PhaseMark,
    Pin,
    Populate,
    Punch,
    SetAttr,
    SetMemoryRegion,
    Tick,
    Unpin,
)
from ..workload.scenario import Scenario, SharedRegion
from ..workload.units import format_size
from .acceptance import Acceptance
from .base import GuestArch
from .layout import LOW_LIMIT, Layout, PlacementError, align_down

# Runtime DMA buffers with "low_memory_biased" locality land below 4 GiB this often [assumed].
LOW_BIAS = 0.8
# memblock allocations before a top-down region leave its end at an arbitrary 4K boundary: the gap is
# drawn from 1..511 pages, so a 4K-aligned region is not 2M-aligned (§1.2 "Not 2M-aligned by default").
TOP_DOWN_SLACK_PAGES = 511


class Lifecycle:
    def __init__(self, sc: Scenario, guest: GuestArch, seed: int) -> None:
        self.sc = sc
        self.guest = guest
        # One stream per purpose, so e.g. the swiotlb's offset does not depend on how many draws placing
        # the GHCB pages took (which varies with guest size).
        self.rng_place = random.Random(f"{seed}:place")
        self.rng_slack = random.Random(f"{seed}:slack")
        self.rng_runtime = random.Random(f"{seed}:runtime")
        self.layout = Layout(sc.guest_mem)
        self.plan = sc.accept_plan()
        self.acceptance = Acceptance(sc.guest_mem, sc.accept.chunk, enabled=sc.accept.mode != "none")
        self.payload: list[tuple[int, int]] = []
        self.pool: list[tuple[int, int]] = []  # shared ranges the host maps (host_access.pattern = pool)
        self.pins: list[tuple[int, int]] = []
        self.host_phase = 0  # offset of the scattered host-write pattern, drawn at runtime start

    def events(self) -> Iterator[Event]:
        yield from self.launch()
        yield from self.boot()
        # evaluated after boot: a guest that never runs (attr-init-1t) has no runtime phase
        if self.sc.runtime_s or self.acceptance.accepted < self.plan.total or self.sc.host_access.pattern != "none":
            yield from self.runtime()
        if self.sc.teardown:
            yield from self.teardown()

    # --- helpers -----------------------------------------------------------------------------------

    def _fail(self, key: str, reason: str) -> UsageError:
        return UsageError(f"{self.sc.source or self.sc.name}: {key}: {reason}")

    def _accept(self, chunks: Iterator[tuple[int, int]]) -> Iterator[Event]:
        for start, end in chunks:
            yield from self.guest.accept(start, end)

    def _place_payload(self, index: int, gpa: int | None, size: int) -> tuple[int, int]:
        try:
            if gpa is not None and gpa + size <= self.sc.guest_mem and not self.layout.overlap(gpa, gpa + size):
                self.layout.reserve(gpa, gpa + size)
            else:  # firmware sits just below 4 GiB; a smaller guest gets it at the top of RAM
                gpa = self.layout.top_down(size, PAGE_SIZE, LOW_LIMIT)
        except PlacementError as exc:
            raise self._fail(f"populate.ranges[{index}]", str(exc)) from None
        return gpa, gpa + size

    def _place_region(self, region: SharedRegion, size: int) -> int:
        align = region.align
        try:
            if region.location == "scattered":
                return self.layout.scattered(size, align, 0, self.sc.guest_mem, self.rng_place)
            below = LOW_LIMIT if region.location == "low" else self.sc.guest_mem
            below = min(below, self.sc.guest_mem)
            if align < PMD_SIZE:
                below -= self.rng_slack.randint(1, TOP_DOWN_SLACK_PAGES) * PAGE_SIZE
            return self.layout.top_down(size, align, below)
        except PlacementError as exc:
            raise self._fail(f"shared_regions.{region.name}", f"cannot place {format_size(size)}: {exc}") from None

    # --- phases --------------------------------------------------------------------------------------

    def launch(self) -> Iterator[Event]:
        sc = self.sc
        yield PhaseMark(Phase.LAUNCH)
        yield CreateGmem(sc.guest_mem, sc.gmem_flags.init == "shared", sc.gmem_flags.mmap,
                         sc.backing.allocator, sc.backing.page, sc.no_direct_map)
        yield SetMemoryRegion(slot=0, gpa=0, size=sc.guest_mem, gmem_offset=0)
        if sc.set_attr_private:
            yield SetAttr(0, sc.guest_mem, private=True)
        if sc.populate.prealloc:
            yield Falloc(0, sc.guest_mem)
        yield from self.populate()
        yield from self.guest.launch_finish()

    def populate(self) -> Iterator[Event]:
        """§1.2 (a) kvm_gmem_populate, (b) mmap in place; §1.1 VMM writes; §1.4 write then donate."""
        pop = self.sc.populate
        file_shared = self.sc.gmem_flags.init == "shared"
        for i, rng in enumerate(pop.ranges):
            start, end = self._place_payload(i, rng.gpa, rng.size)
            self.payload.append((start, end))
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

    def boot(self) -> Iterator[Event]:
        """Firmware and the kernel's early boot run on the boot vCPU alone; then every vCPU is up (SMP)."""
        sc, plan = self.sc, self.plan
        yield PhaseMark(Phase.FIRMWARE)
        yield from self.guest.boot_start(self.payload)
        yield from self._accept(self.acceptance.advance(plan.early))
        yield PhaseMark(Phase.BOOT)
        # Before init_per_zone_wmark_min() the watermarks are zero and every allocation accepts a chunk:
        # the boot vCPU accepts this much alone (dstack #1220).
        yield from self._accept(self.acceptance.advance(plan.early + plan.storm))
        for region in sc.shared_regions:
            yield from self.shared_region(region)
        yield PhaseMark(Phase.SMP)
        touched = align_down(int(sc.guest_touch.fraction_of_mem * sc.guest_mem), PMD_SIZE)
        if touched:
            yield GuestFault(0, touched)
        yield from self._accept(self.acceptance.advance(plan.boot))

    def shared_region(self, region: SharedRegion) -> Iterator[Event]:
        """Place each instance, accept its chunks (the allocation), convert it to shared (§1.2-§1.4)."""
        size = self.sc.region_size(region)
        for _ in range(self.sc.region_count(region)):
            if not region.ram:
                start = self.layout.outside_ram(size, region.align)
                yield from self.guest.map_device(start, start + size, region)
                continue
            start = self._place_region(region, size)
            yield from self._accept(self.acceptance.ensure(start, start + size))
            yield from self.guest.to_shared(start, start + size, region)
            if region.pool:
                self.pool.append((start, start + size))

    def runtime(self) -> Iterator[Event]:
        sc = self.sc
        yield PhaseMark(Phase.RUNTIME)
        yield from self.host_pool_access()
        seconds = sc.runtime_s
        remaining = self.plan.total - self.acceptance.accepted
        base = self.acceptance.accepted
        churn = self.churn_site() if sc.runtime_churn.rate_per_s else None
        for second in range(seconds):
            yield Tick(second)
            target = base + remaining * (second + 1) // seconds
            yield from self._accept(self.acceptance.advance(target))
            if churn is not None:
                rate = sc.runtime_churn.rate_per_s
                for _ in range(int((second + 1) * rate) - int(second * rate)):
                    yield from next(churn)
            yield from self.scattered_host_writes(second, seconds)
        if not seconds:
            yield from self._accept(self.acceptance.advance(self.plan.total))
            yield from self.scattered_host_writes(0, 1)

    def host_pool_access(self) -> Iterator[Event]:
        """DPDK/vhost or device models mapping the shared pool, optionally pinning it (§1.5, §5.7)."""
        access = self.sc.host_access
        if access.pattern != "pool":
            return
        for start, end in self.pool:
            pinned = align_down(int((end - start) * access.pins.fraction), PAGE_SIZE)
            if pinned:
                yield Pin(start, start + pinned, access.pins.longterm)
                self.pins.append((start, start + pinned))
            touched = align_down(int((end - start) * access.touched_fraction), PAGE_SIZE)
            if touched:
                yield HostWrite(start, start + touched, want_size=access.wants_mapping)

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
            yield HostWrite(lo, hi, stride=stride, want_size=access.wants_mapping)

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
        yield from self._accept(self.acceptance.ensure(start, end))
        yield from self.guest.to_shared(start, end)
        yield from self.guest.to_private(start, end)

    def _dma_buffer(self, size: int) -> Iterator[Event]:
        """dma_alloc_coherent (naturally aligned, to shared) then dma_free_coherent (to private).

        The buddy allocator hands out memory it already accepted, so buffers land below the acceptance
        frontier (and need no acceptance of their own), except next to the pool (``neighbour_of_pool``).
        """
        churn, rng = self.sc.runtime_churn, self.rng_runtime
        limit = self.acceptance.frontier if self.acceptance.enabled else self.sc.guest_mem
        lo, hi = 0, limit
        if self.pool and rng.random() < churn.neighbour_of_pool:
            folio = self.sc.backing.page
            pool_start, _ = rng.choice(self.pool)
            lo = align_down(pool_start, folio)
            hi = min(lo + folio, self.sc.guest_mem)
        elif churn.locality == "low_memory_biased" and rng.random() < LOW_BIAS:
            hi = min(LOW_LIMIT, limit)
        try:
            start = self.layout.scattered(size, size, lo, hi, rng)
        except PlacementError:
            try:
                start = self.layout.scattered(size, size, 0, self.sc.guest_mem, rng)
            except PlacementError as exc:
                reason = f"no room for a {format_size(size)} buffer: {exc}"
                raise self._fail("runtime_churn.size_dist", reason) from None
        yield from self._flip(start, start + size)
        self.layout.release(start)

    def _pingpong_page(self) -> int:
        """A page in the highest backing folio holding no other reservation (an otherwise private folio);
        in a guest too small for one, any free page."""
        folio = self.sc.backing.page
        lo, hi = 0, self.sc.guest_mem
        for base in range(align_down(self.sc.guest_mem - 1, folio), -1, -folio):
            if self.layout.overlap(base, base + folio) is None:
                lo, hi = base, base + folio
                break
        return self.layout.scattered(PAGE_SIZE, PAGE_SIZE, lo, hi, self.rng_runtime)

    def teardown(self) -> Iterator[Event]:
        yield PhaseMark(Phase.TEARDOWN)
        for start, end in self.pins:
            yield Unpin(start, end)
        yield Punch(0, self.sc.guest_mem)
