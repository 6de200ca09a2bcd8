"""The simulator's event vocabulary (workloads.md §1 table), as small frozen dataclasses.

Every event carries **ranges, never per-page lists** (DESIGN.md principle 3): a 4 MiB accept is one
:class:`Accept`, a 64 MiB pKVM share is one :class:`Share` standing for 16,384 hypercalls. Ranges are
RAM offsets ``[start, end)``, page aligned: the simulated memslots (QEMU's, :func:`~gmemlab.workload.derived.memslots`)
map RAM offset ``x`` at gfn ``x >> 12`` and guest_memfd offset ``x``, so an address is also a file offset;
ranges at or above ``guest_mem`` are outside RAM (e.g. TDX's MMIO hole, §1.3). ``gfn_start``/``gfn_end``
give the frame numbers.

Who decides what (the engine applies these to the model under a policy):
* Generators emit what the guest and the VMM *ask for*. Outcomes that depend on model state at run time are
  the engine's: whether a 2M :class:`Pvalidate` hits a 4K RMP entry and falls back to 512 x 4K (§1.2,
  cost row 24), which level of an :class:`Accept`'s ``try_levels`` succeeds against the S-EPT (§1.3), the
  mapping level a :class:`GuestFault` gets (§2.1), and whether a conversion fails with EAGAIN (§3.4).
* An exit event (:class:`HcMapGpa`) only records the trip to userspace; the VMM's reaction follows as
  explicit events (:class:`GmemConvert`, or :class:`SetAttr` plus :class:`Punch`).

A regular run of identical calls (lazy acceptance's 4 MiB steps, OVMF's 32 MiB chunks, full PSC
descriptors) is one :class:`Repeat`, so the stream follows the number of irregularities, not the guest
size; :func:`expand` gives the calls one by one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from enum import StrEnum

from ..level import Level
from ..uapi import PAGE_SHIFT, PAGE_SIZE
from .units import format_level, format_size


class Phase(StrEnum):
    """Lifecycle phases (§1): the VMM builds the VM (``launch``), the guest boots (``firmware`` and ``boot`` on
    the boot vCPU alone, then ``smp`` with every vCPU up), runs, and the VM is torn down."""

    LAUNCH = "launch"
    FIRMWARE = "firmware"
    BOOT = "boot"
    SMP = "smp"
    RUNTIME = "runtime"
    TEARDOWN = "teardown"


@dataclass(frozen=True, slots=True)
class PhaseMark:
    """Start of a lifecycle phase; ``cpus``: how many vCPUs do its work in parallel (the boot critical
    path divides parallel work by it; ``gmemlab.sim.timing``)."""

    phase: Phase
    cpus: int = 1


@dataclass(frozen=True, slots=True)
class Tick:
    """One simulated second of runtime has begun (``second`` counts from 0); metrics may sample here."""

    second: int


@dataclass(frozen=True, slots=True)
class Range:
    """A GPA byte range ``[start, end)``; the base of every ranged event."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end or (self.start | self.end) & (PAGE_SIZE - 1):
            raise ValueError(f"{type(self).__name__}: bad range [{self.start:#x}, {self.end:#x})")

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def pages(self) -> int:
        """Number of 4 KiB pages."""
        return self.size >> PAGE_SHIFT

    @property
    def gfn_start(self) -> int:
        return self.start >> PAGE_SHIFT

    @property
    def gfn_end(self) -> int:
        return self.end >> PAGE_SHIFT


# --- VMM / host side -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateGmem:
    """KVM_CREATE_GUEST_MEMFD (§1 ``CREATE_GMEM``): size, MMAP, INIT_SHARED vs private, allocator.

    ``allocator`` and its folio ``page_size``: ``buddy`` (4K, order-0 as upstream, §0), ``buddy_thp`` (2M THP
    blocks, pKVM §1.4) or ``hugetlb`` (2M or 1G, the RFC's GUESTMEM_HUGETLB flag, §3.1).
    """

    size: int
    init_shared: bool
    mmap: bool
    allocator: str
    page_size: int
    no_direct_map: bool = False


@dataclass(frozen=True, slots=True)
class SetMemoryRegion:
    """KVM_SET_USER_MEMORY_REGION2 binding the guest_memfd to a memslot (slot 0 covers all RAM)."""

    slot: int
    gpa: int
    size: int
    gmem_offset: int


@dataclass(frozen=True, slots=True)
class SetAttr(Range):
    """VM-scoped KVM_SET_MEMORY_ATTRIBUTES (§0): one xarray entry per 4K today, one range in a maple tree."""

    private: bool


@dataclass(frozen=True, slots=True)
class GmemConvert(Range):
    """guest_memfd-scoped conversion (RFC KVM_GMEM_CONVERT_SHARED/PRIVATE, §3.3-3.4)."""

    to_shared: bool


@dataclass(frozen=True, slots=True)
class Falloc(Range):
    """fallocate(mode=0) on the guest_memfd: allocate folios (§1.2 mmap-populate prealloc)."""


@dataclass(frozen=True, slots=True)
class Punch(Range):
    """fallocate(PUNCH_HOLE): zap, zero partial huge pages, free or merge-then-free (§3.6)."""


@dataclass(frozen=True, slots=True)
class HostWrite(Range):
    """The VMM or a host device writes guest memory through the guest_memfd mmap (host faults, §3.2).

    ``stride == 0``: every page of the range. ``stride > 0``: one 4K page every ``stride`` bytes starting
    at ``start`` (a scattered pattern as one event, §5.1 ``scattered_4k``). The host mapping level is the
    kernel's (the gmem fault handler's, from the folio and its shareability), not the consumer's: a DPDK
    that would like 1G/2M (§1.5) gets what ``host_map_bytes`` reports.
    """

    stride: int = 0

    @property
    def touched_pages(self) -> int:
        return self.pages if not self.stride else -(-self.size // self.stride)


@dataclass(frozen=True, slots=True)
class Populate(Range):
    """kvm_gmem_populate + arch post_populate, 4K at a time (§0, §1.2 SNP_LAUNCH_UPDATE, §1.3 PAGE.ADD).

    ``kind``: normal or zero (SNP_PAGE_TYPE_ZERO has no source to copy or pin; every other SNP page type
    copies one).
    ``measure``: TDX MR.EXTEND x16 per page. ``in_place``: the payload was written through the mmap first
    (§1.2 method b), no source buffer GUP. ``rom``: the range is the firmware flash (its own guest_memfd),
    not RAM: priced, but the RAM file is untouched.
    """

    kind: str = "normal"
    measure: bool = False
    in_place: bool = False
    rom: bool = False


@dataclass(frozen=True, slots=True)
class LaunchFinish:
    """SNP_LAUNCH_FINISH / TDH.MR.FINALIZE: per-vCPU VMSA pages (SNP: RMPUPDATE + LAUNCH_UPDATE each,
    §1.2 step 5); afterwards KVM allows pre-faulting and first-touch faults make pages private."""

    vmsa_pages: int


@dataclass(frozen=True, slots=True)
class PinUserPages(Range):
    """``pin_user_pages`` of shared pages through the guest_memfd mmap; ``longterm`` is FOLL_LONGTERM (VFIO,
    vhost, io_uring; §1.5, §3.5)."""

    longterm: bool = True


@dataclass(frozen=True, slots=True)
class UnpinUserPages(Range):
    """``unpin_user_pages``: drop the pins taken by a :class:`PinUserPages` of the same range."""


# --- guest side and exits --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuestFault(Range):
    """The guest touches every page of the range; each unmapped page takes a stage-2 fault (§2.1).

    A well-behaved guest faults private memory as private and shared memory as shared, so the model's
    state decides the fault type and the level (``kvm_mmu_max_mapping_level``), not the event.
    """


@dataclass(frozen=True, slots=True)
class HcMapGpa(Range):
    """One KVM_EXIT_HYPERCALL(KVM_HC_MAP_GPA_RANGE) trip to userspace (§1 ``HC_MAP_GPA``, cost row 26).

    The VMM's reaction (and so the direction) follows as its own events (:class:`GmemConvert`, or
    :class:`SetAttr` and :class:`Punch`).
    """


@dataclass(frozen=True, slots=True)
class PscRun(Range):
    """Consecutive PSC entries of one page size inside a descriptor (``entries`` of them).

    KVM merges adjacent same-size, same-operation entries into one userspace exit (§1.2 ``snp_begin_psc``),
    so one run is one :class:`HcMapGpa`.
    """

    page_size: int

    @property
    def entries(self) -> int:
        return self.size // self.page_size


@dataclass(frozen=True, slots=True)
class Psc:
    """One SNP Page State Change VMGEXIT (§1.2): a GHCB descriptor of at most 64 entries, or one 4K page
    with the early GHCB MSR protocol (a single run of one 4K entry); both are one VMGEXIT (row 25)."""

    runs: tuple[PscRun, ...]

    @property
    def entries(self) -> int:
        return sum(run.entries for run in self.runs)


@dataclass(frozen=True, slots=True)
class Pvalidate(Range):
    """SNP PVALIDATE over the range at ``page_size`` (4K or 2M); ``validate=False`` rescinds.

    The range stands for ``size // page_size`` instructions. A 2M attempt that meets a 4K RMP entry
    (PVALIDATE_FAIL_SIZEMISMATCH) falls back to 512 x 4K: the engine decides, from the model's RMP level.
    Each instruction on an unmapped GPA takes a nested page fault first (§1.2 lazy acceptance).
    """

    page_size: int
    validate: bool = True


@dataclass(frozen=True, slots=True)
class Accept(Range):
    """TDX TDG.MEM.PAGE.ACCEPT over the range (§1.3 ``tdx_accept_memory``).

    For each aligned piece the guest tries ``try_levels`` largest first (1G, 2M, 4K); the engine decides
    which level succeeds against the S-EPT mapping level (4K upstream). An accept of an unmapped GPA takes
    an EPT violation that KVM serves with TDH.MEM.PAGE.AUG.
    """

    try_levels: tuple[Level, ...]


@dataclass(frozen=True, slots=True)
class MapGpa(Range):
    """TDX TDG.VP.VMCALL<MapGPA>; KVM splits it into 2 MiB :class:`HcMapGpa` exits (§1.3)."""


@dataclass(frozen=True, slots=True)
class PerGranule(Range):
    """A range the guest walks one hypercall per ``granule`` (pKVM has no batching, §1.4)."""

    granule: int = PAGE_SIZE

    @property
    def hypercalls(self) -> int:
        return self.size // self.granule


@dataclass(frozen=True, slots=True)
class Share(PerGranule):
    """pKVM MEM_SHARE: one SMCCC call per granule (§1.4); no zeroing on conversion."""


@dataclass(frozen=True, slots=True)
class Unshare(PerGranule):
    """pKVM MEM_UNSHARE: one SMCCC call per granule (§1.4)."""


@dataclass(frozen=True, slots=True)
class MmioGuardMap(PerGranule):
    """pKVM MMIO_GUARD_MAP of device pages: one hypercall per granule, not guest RAM (§1.4)."""


@dataclass(frozen=True, slots=True)
class Repeat:
    """``block`` ``times`` times in a row, the ``k``-th copy shifted by ``k * stride`` bytes (:func:`shift`):
    one event for a regular run of identical calls. The engine may apply a run at once where that is
    exact (:meth:`gmemlab.sim.engine.Engine._on_Repeat`); the reference run applies the copies one by one."""

    block: tuple[Event, ...]
    times: int
    stride: int

    def __post_init__(self) -> None:
        if not self.block or self.times < 1 or self.stride <= 0 or self.stride % PAGE_SIZE:
            raise ValueError(f"Repeat: bad run ({len(self.block)} events x {self.times}, stride {self.stride:#x})")

    def copy(self, k: int) -> tuple[Event, ...]:
        return shifted(self.block, k * self.stride)

    @property
    def count(self) -> int:
        """How many events the run stands for."""
        return self.times * sum(e.count if isinstance(e, Repeat) else 1 for e in self.block)


Event = (
    PhaseMark | Tick | CreateGmem | SetMemoryRegion | SetAttr | GmemConvert | Falloc | Punch | HostWrite
    | Populate | LaunchFinish | PinUserPages | UnpinUserPages | GuestFault | HcMapGpa | Psc | Pvalidate | Accept
    | MapGpa | Share | Unshare | MmioGuardMap | Repeat
)


def shift(event: Event, delta: int) -> Event:
    """``event`` moved by ``delta`` bytes (ranged events, PSC descriptors and runs of them only)."""
    if isinstance(event, Range):
        return replace(event, start=event.start + delta, end=event.end + delta)
    if isinstance(event, Psc):
        return Psc(tuple(replace(r, start=r.start + delta, end=r.end + delta) for r in event.runs))
    if isinstance(event, Repeat):
        return Repeat(shifted(event.block, delta), event.times, event.stride)
    raise ValueError(f"{type(event).__name__} has no address to shift")


def shifted(block: Iterable[Event], delta: int) -> tuple[Event, ...]:
    return tuple(shift(e, delta) for e in block) if delta else tuple(block)


def expand(stream: Iterable[Event]) -> Iterator[Event]:
    """The stream with every :class:`Repeat` written out call by call."""
    for event in stream:
        if isinstance(event, Repeat):
            for k in range(event.times):
                yield from expand(event.copy(k))
        else:
            yield event


def tally(stream: Iterable[Event]) -> Counter[str]:
    """Events by type, a :class:`Repeat` counted as the calls it stands for (without writing them out)."""
    out: Counter[str] = Counter()
    for event in stream:
        if isinstance(event, Repeat):
            for name, n in tally(event.block).items():
                out[name] += n * event.times
        else:
            out[type(event).__name__] += 1
    return out


def repeated(make: Callable[[int], Iterable[Event]], times: int, stride: int) -> Iterator[Event]:
    """The events of ``make(k * stride)`` for ``k < times``: one :class:`Repeat` when the copies are shifts of
    the first (checked on the second and the last; ``make`` must not depend on anything but its argument),
    else one by one."""
    if times <= 0:
        return
    first = tuple(make(0))
    if times == 1 or not first:
        yield from first
        if times > 1:
            for k in range(1, times):
                yield from make(k * stride)
        return
    last = (times - 1) * stride
    try:
        regular = tuple(make(stride)) == shifted(first, stride) and tuple(make(last)) == shifted(first, last)
    except ValueError:
        regular = False
    if regular:
        yield Repeat(first, times, stride)
        return
    yield from first
    for k in range(1, times):
        yield from make(k * stride)

_LEVEL_FIELDS = {"page_size", "granule"}


def format_event(event: Event) -> str:
    """One line: ``Pvalidate [0x40000000-0x40400000) 4MiB page_size=2M validate=True``."""
    if isinstance(event, Repeat):
        inner = "; ".join(format_event(e) for e in event.block)
        return f"Repeat x{event.times:,} every {format_size(event.stride)}: {inner}"
    parts = [type(event).__name__]
    if isinstance(event, Range):
        parts.append(f"[{event.start:#x}-{event.end:#x}) {format_size(event.size)}")
    for fld in fields(event):
        if fld.name in ("start", "end"):
            continue
        value = getattr(event, fld.name)
        if fld.name in _LEVEL_FIELDS:
            text = format_level(value)
        elif fld.name in ("size", "stride"):
            text = format_size(value)
        elif fld.name == "runs":
            text = "+".join(f"{run.entries}x{format_level(run.page_size)}" for run in value)
        elif fld.name == "try_levels":
            text = ",".join(level.label for level in value)
        elif isinstance(value, Phase):
            text = value.value
        else:
            text = f"{value:#x}" if fld.name in ("gpa", "gmem_offset") else str(value)
        parts.append(f"{fld.name}={text}")
    return " ".join(parts)
