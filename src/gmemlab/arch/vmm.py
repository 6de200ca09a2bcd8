"""The VMM's reaction to a conversion exit (workloads.md §1.2 "QEMU side", ``kvm_convert_memory``).

With an mmap-capable guest_memfd the in-place conversion RFC calls the gmem shareability ioctl
(:class:`GmemConvert`). Without it QEMU sets the VM attribute (a no-op when the range already has it) and
discards the *other* backing: to shared punches a hole in the guest_memfd; to private discards the shared
backing, which is not guest_memfd and so not modelled. Conversions of non-RAM ranges are ignored (§1.3
"QEMU ignores conversions of regions that are not RAM").
"""

from __future__ import annotations

from collections.abc import Iterator

from ..workload.events import Event, GmemConvert, Punch, SetAttr
from ..workload.scenario import Scenario


class Vmm:
    def __init__(self, sc: Scenario) -> None:
        self.ram_end = sc.guest_mem
        self.in_place = sc.gmem_flags.mmap

    def convert(self, start: int, end: int, to_shared: bool) -> Iterator[Event]:
        """Events for userspace handling one KVM_HC_MAP_GPA_RANGE / memory-fault exit."""
        end = min(end, self.ram_end)
        if start >= end:
            return
        if self.in_place:
            yield GmemConvert(start, end, to_shared)
            return
        yield SetAttr(start, end, private=not to_shared)
        if to_shared:
            yield Punch(start, end)
