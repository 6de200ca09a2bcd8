"""AMD SEV-SNP guest behaviour (workloads.md §1.2).

* Page-state changes go in GHCB PSC descriptors of at most 64 entries; an entry is 2M when the address is
  2M-aligned and at least 2M remains, otherwise 4K (``__set_pages_state``). Entries are produced as runs
  (:class:`PscRun`), never one object per page.
* KVM merges adjacent entries of the same size and operation into one KVM_HC_MAP_GPA_RANGE exit
  (``snp_begin_psc``): one run, one :class:`HcMapGpa`, then the VMM's conversion.
* private -> shared: PVALIDATE(rescind) the descriptor's entries first, then the VMGEXIT;
  shared -> private: the VMGEXIT first, then PVALIDATE.
* Before a GHCB exists the MSR protocol converts one 4K page per VMGEXIT, each its own exit.
* Acceptance of a chunk is a shared -> private change: for 4 MiB, one descriptor of 2 x 2M, one exit,
  one :class:`Pvalidate` of 2M pages.
* PVALIDATE at 2M falls back to 512 x 4K when the RMP entry is 4K (PVALIDATE_FAIL_SIZEMISMATCH). That
  depends on the RMP level in the model at run time, so the generator emits the 2M attempt and **the engine
  decides** the fallback (cost row 24).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..level import Level
from ..uapi import PAGE_SIZE
from ..workload.derived import OVMF_PSC_MAX_ENTRIES, PSC_MAX_ENTRIES
from ..workload.events import Event, HcMapGpa, LaunchFinish, Psc, PscRun, Pvalidate, repeated
from .base import GuestArch

PMD_SIZE = Level.PG_2M.bytes


def psc_descriptors(start: int, end: int, use_2m: bool = True,
                    max_entries: int = PSC_MAX_ENTRIES) -> Iterator[tuple[PscRun, ...]]:
    """The runs of each PSC descriptor the guest builds for ``[start, end)`` (``__set_pages_state``).

    Entries are 2M where the address is 2M-aligned and 2M remains, else 4K; adjacent entries of one
    size form one run (one merged exit).
    """
    addr = start
    while addr < end:
        runs: list[PscRun] = []
        room = max_entries
        while addr < end and room:
            if use_2m and addr % PMD_SIZE == 0 and end - addr >= PMD_SIZE:
                n, size = min(room, (end - addr) // PMD_SIZE), PMD_SIZE
            else:  # 4K entries up to the next address where a 2M entry could start
                boundary = min(end, (addr // PMD_SIZE + 1) * PMD_SIZE) if use_2m else end
                if use_2m and end - boundary < PMD_SIZE:
                    boundary = end
                n, size = min(room, (boundary - addr) // PAGE_SIZE), PAGE_SIZE
            runs.append(PscRun(addr, addr + n * size, size))
            addr += n * size
            room -= n
        yield tuple(runs)


class SnpGuest(GuestArch):
    name = "snp"
    private_memory = True

    def launch_finish(self) -> Iterator[Event]:
        yield LaunchFinish(vmsa_pages=self.sc.vcpus * self.sc.populate.vmsa_per_vcpu)

    def _pvalidate(self, runs: tuple[PscRun, ...], validate: bool) -> Iterator[Event]:
        for run in runs:
            yield Pvalidate(run.start, run.end, min(run.page_size, self.sc.accept.pvalidate_size), validate)

    def _exits(self, runs: tuple[PscRun, ...], to_shared: bool) -> Iterator[Event]:
        for run in runs:
            yield HcMapGpa(run.start, run.end)
            yield from self.vmm.convert(run.start, run.end, to_shared)

    def _descriptor(self, runs: tuple[PscRun, ...], to_shared: bool) -> Iterator[Event]:
        """One PSC VMGEXIT and what follows it (rescind before sharing, validate after privatizing)."""
        if to_shared:
            yield from self._pvalidate(runs, validate=False)
        yield Psc(runs)
        yield from self._exits(runs, to_shared)
        if not to_shared:
            yield from self._pvalidate(runs, validate=True)

    def _change(self, start: int, end: int, to_shared: bool, msr: bool = False,
                max_entries: int = PSC_MAX_ENTRIES) -> Iterator[Event]:
        if msr:  # one 4K page per VMGEXIT
            pages = (end - start) // PAGE_SIZE
            yield from repeated(lambda d: self._descriptor((PscRun(start + d, start + d + PAGE_SIZE, PAGE_SIZE),),
                                                           to_shared), pages, PAGE_SIZE)
            return
        use_2m = self.sc.accept.psc_entry_size >= PMD_SIZE
        entry = PMD_SIZE if use_2m else PAGE_SIZE
        full = max_entries * entry  # a descriptor of max_entries entries: the same call every `full` bytes
        if start % entry == 0 and end - start >= 2 * full:
            n = (end - start) // full
            yield from repeated(lambda d: self._descriptor((PscRun(start + d, start + d + full, entry),), to_shared),
                                n, full)
            start += n * full
        if start < end:
            for runs in psc_descriptors(start, end, use_2m, max_entries):
                yield from self._descriptor(runs, to_shared)

    def firmware_accept(self, start: int, end: int) -> Iterator[Event]:
        # OVMF MemEncryptSevSnpPreValidateSystemRam: PSC of up to 253 entries, 2M where aligned (F2)
        return self._change(start, end, to_shared=False, max_entries=OVMF_PSC_MAX_ENTRIES)

    def accept(self, start: int, end: int) -> Iterator[Event]:
        return self._change(start, end, to_shared=False)

    def to_shared(self, start: int, end: int, *, msr: bool = False, granule: int = PAGE_SIZE) -> Iterator[Event]:
        return self._change(start, end, to_shared=True, msr=msr)

    def to_private(self, start: int, end: int) -> Iterator[Event]:
        return self._change(start, end, to_shared=False)
