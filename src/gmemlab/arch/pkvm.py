"""pKVM (arm64) protected-VM behaviour (workloads.md §1.4).

* Memory is private by default and donated to the guest on its first stage-2 fault, content kept: the
  payload the VMM wrote is faulted in at boot (:class:`GuestFault`, private).
* set_memory_decrypted/encrypted issue one MEM_SHARE/MEM_UNSHARE SMCCC call per granule, no batching:
  one :class:`Share` event stands for ``size / granule`` hypercalls (64 MiB swiotlb = 16,384).
* EL2 handles the hypercall; the guest_memfd shareability update that follows is in-kernel, with no
  userspace exit and no zeroing (Sean: pKVM must not zero on conversion) [assumed: modelled as a
  :class:`GmemConvert` right after the hypercall].
* Device pages: one MMIO_GUARD_MAP call per granule (:class:`MmioGuardMap`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..uapi import PAGE_SIZE
from ..workload.events import Event, GmemConvert, GuestFault, MmioGuardMap, Share, Unshare
from .base import GuestArch


class PkvmGuest(GuestArch):
    name = "pkvm"
    private_memory = True

    def boot_start(self, payload: Iterable[tuple[int, int]]) -> Iterator[Event]:
        for start, end in payload:
            yield GuestFault(start, end)

    def to_shared(self, start: int, end: int, *, msr: bool = False, granule: int = PAGE_SIZE) -> Iterator[Event]:
        yield Share(start, end, granule)
        yield GmemConvert(start, end, to_shared=True)

    def to_private(self, start: int, end: int) -> Iterator[Event]:
        yield Unshare(start, end, PAGE_SIZE)
        yield GmemConvert(start, end, to_shared=False)

    def map_device(self, start: int, end: int, granule: int = PAGE_SIZE) -> Iterator[Event]:
        yield MmioGuardMap(start, end, granule)
