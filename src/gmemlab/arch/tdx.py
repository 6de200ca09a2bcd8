"""Intel TDX guest behaviour (workloads.md §1.3).

* private -> shared: one TDG.VP.VMCALL<MapGPA> (:class:`MapGpa`); KVM splits it into
  ``arch_limits.map_gpa_chunk`` (2 MiB, TDX_MAP_GPA_MAX_LEN) pieces, each one userspace exit
  (:class:`HcMapGpa`) followed by the VMM's conversion. A 1 GiB swiotlb costs 512 exits.
* shared -> private: MapGPA(private) the same way, then TDG.MEM.PAGE.ACCEPT.
* acceptance (lazy or eager): :class:`Accept` over the range with the guest's try levels (1G, 2M, 4K per
  aligned piece, ``tdx_accept_memory``). Which level succeeds depends on the S-EPT level in the model
  (4K upstream, so 2M accepts fall back to 512 x 4K): **the engine decides**.
* MMIO (the 32-bit PCI hole, OVMF): MapGPA(shared) and its exits, which QEMU ignores (not RAM).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..level import Level
from ..uapi import PAGE_SIZE
from ..workload.events import Accept, Event, HcMapGpa, LaunchFinish, MapGpa, repeated
from ..workload.scenario import Scenario
from .base import GuestArch

FIRMWARE_CHUNK = 32 << 20  # OvmfPkg TdxHelperLib ACCEPT_CHUNK_SIZE
FIRMWARE_TRY_LEVELS = (Level.PG_2M, Level.PG_4K)  # PcdTdxAcceptPageSize = 2 MiB, 4K for the remainder


class TdxGuest(GuestArch):
    name = "tdx"
    private_memory = True

    def __init__(self, sc: Scenario) -> None:
        super().__init__(sc)
        self.try_levels = tuple(Level.of_size(size) for size in sc.accept.guest_try_levels)

    def launch_finish(self) -> Iterator[Event]:
        yield LaunchFinish(vmsa_pages=0)  # TDH.MR.FINALIZE; TDVPR pages are not guest_memfd

    def _map_gpa(self, start: int, end: int, to_shared: bool) -> Iterator[Event]:
        yield MapGpa(start, end)
        step = self.sc.arch_limits.map_gpa_chunk  # KVM exits to userspace per 2 MiB piece
        n = (end - start) // step
        yield from repeated(lambda d: self._map_gpa_piece(start + d, start + d + step, to_shared), n, step)
        if start + n * step < end:
            yield from self._map_gpa_piece(start + n * step, end, to_shared)

    def _map_gpa_piece(self, start: int, end: int, to_shared: bool) -> Iterator[Event]:
        yield HcMapGpa(start, end)
        yield from self.vmm.convert(start, end, to_shared)

    def firmware_accept(self, start: int, end: int) -> Iterator[Event]:
        # OVMF SEC: 32 MiB chunks over the vCPUs, TDCALL ACCEPT at PcdTdxAcceptPageSize (2M) then 4K (F4, F5)
        n = (end - start) // FIRMWARE_CHUNK
        yield from repeated(lambda d: (Accept(start + d, start + d + FIRMWARE_CHUNK, FIRMWARE_TRY_LEVELS),), n,
                            FIRMWARE_CHUNK)
        if start + n * FIRMWARE_CHUNK < end:
            yield Accept(start + n * FIRMWARE_CHUNK, end, FIRMWARE_TRY_LEVELS)

    def accept(self, start: int, end: int) -> Iterator[Event]:
        yield Accept(start, end, self.try_levels)

    def to_shared(self, start: int, end: int, *, msr: bool = False, granule: int = PAGE_SIZE) -> Iterator[Event]:
        return self._map_gpa(start, end, to_shared=True)

    def to_private(self, start: int, end: int) -> Iterator[Event]:
        yield from self._map_gpa(start, end, to_shared=False)
        yield from self.accept(start, end)

    def map_device(self, start: int, end: int, granule: int = PAGE_SIZE) -> Iterator[Event]:
        return self._map_gpa(start, end, to_shared=True)
