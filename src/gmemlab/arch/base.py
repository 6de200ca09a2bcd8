"""What a guest of one architecture does for each memory transition (DESIGN.md principle 6).

A :class:`GuestArch` turns "accept this range", "make this range shared/private" and "map this device
range" into the architecture's event flow (workloads.md §1.2 SNP, §1.3 TDX, §1.4 pKVM, §1.1 non-CoCo),
including the exits and the VMM's reaction. The generic lifecycle (:mod:`gmemlab.arch.lifecycle`) decides
*when* and *where*; subclasses decide *how*.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..uapi import PAGE_SIZE
from ..workload.events import Event
from ..workload.scenario import Scenario
from .vmm import Vmm


class GuestArch:
    """The non-CoCo guest: all memory is shared, nothing to accept or convert (§1.1)."""

    name = "none"
    private_memory = False  # guest faults are private (CoCo) or shared

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.vmm = Vmm(sc)

    def launch_finish(self) -> Iterator[Event]:
        """Events ending the launch (SNP_LAUNCH_FINISH, TDH.MR.FINALIZE); none by default."""
        return iter(())

    def boot_start(self, payload: Iterable[tuple[int, int]]) -> Iterator[Event]:
        """First events of the firmware phase, given the payload ranges loaded at launch."""
        return iter(())

    def firmware_accept(self, start: int, end: int) -> Iterator[Event]:
        """The firmware accepts (validates) ``[start, end)`` (docs/placement.md F1-F5)."""
        return iter(())

    def accept(self, start: int, end: int) -> Iterator[Event]:
        """The kernel accepts ``[start, end)`` (one ``arch_accept_memory()`` call)."""
        return iter(())

    def to_shared(self, start: int, end: int, *, msr: bool = False, granule: int = PAGE_SIZE) -> Iterator[Event]:
        """Convert accepted private RAM to shared (``set_memory_decrypted``); ``msr``: SNP's early GHCB MSR
        protocol; ``granule``: pKVM's hypercall granule."""
        return iter(())

    def to_private(self, start: int, end: int) -> Iterator[Event]:
        """Convert shared RAM back to private (``set_memory_encrypted``)."""
        return iter(())

    def map_device(self, start: int, end: int, granule: int = PAGE_SIZE) -> Iterator[Event]:
        """Declare a non-RAM (MMIO) range shared."""
        return iter(())
