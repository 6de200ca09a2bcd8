"""The fuzzer's operations: one small handler per operation, with the values hypothesis draws for it.

An operation is a JSON-able dict, ``{"op": "fallocate", "gmem": 0, "mode": 3, "offset": 4096, ...}``. Objects
are named by a *ref*, an index into the live objects of their kind taken modulo their number (``gmem: 5``
with two open guest_memfds is the second), so a sequence replays on any backend and shrinks well. Each side
of a lockstep run has its own :class:`World` (its backend behind an observation recorder) and runs the same
handler; the recorder logs every backend call, and the two logs must be equal.

Values cover the whole range of each argument and beyond: ids with address-space bits, offsets and lengths
that run past mappings and files, negative numbers, values that do not fit the C type (refused the same way
by both backends, see :func:`gmemlab.uapi.c_value`), every madvise advice. What is *not* drawn, and why, is
listed in :data:`OUT_OF_REACH`.

To add an operation (for example a new ioctl), write one handler and register it::

    @op("set_attrs2", target="vm", gpa_page=GPA_PAGES, pages=PAGES, attrs=ints(0, 8, 1 << 3))
    def set_attrs2(w: World, o: Op, vm: Any) -> None:
        vm.set_memory_attributes2(w.gpa(o["gpa_page"]), o["pages"] * P, o["attrs"])

``target`` names the kind of object the operation acts on (``vm``, ``gmem``, ``map``, ``vcpu``, or None);
the op's field of that name is its ref, and the operation is only drawn while such an object exists. The
other keyword arguments are the fields, each a :class:`Field` (a hypothesis strategy and the JSON kind
``gmemlab fuzz --replay`` checks). A handler that creates an object appends it to the world's list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st

from ..errors import (
    HostSigbus,
    HostSigsegv,
    KvmError,
    OutsideReservation,
    UnrepresentableArgument,
    VcpuExit,
)
from ..uapi import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SIZE,
    Cap,
)

P = PAGE_SIZE
Op = dict[str, Any]
ALLOC_CAP = 1 << 20  # bytes: the most real memory one operation may allocate on the kernel side
# What a backend call may raise as the kernel's (or the client's) answer: the recorder has logged it as an
# observation, so the sequence goes on (anything else raised inside a backend is a finding)
OUTCOMES = (KvmError, HostSigbus, HostSigsegv, VcpuExit, UnrepresentableArgument, OutsideReservation)

# What the fuzzer deliberately never draws, with the reason (printed by `gmemlab fuzz` and the README).
OUT_OF_REACH = {
    "MADV_HWPOISON / MADV_SOFT_OFFLINE": "they poison or offline real host pages of this shared machine",
    "allocations above 1 MiB per operation": "fallocate, populate, mlock and MAP_POPULATE of more than "
    "ALLOC_CAP bytes would take real memory on the kernel side (not run on either side, counted)",
    "memslots over the kernel backend's own guest": "GPA [0, 2 MiB) of address space 0, its report page at "
    "64 GiB - 2 MiB and slot 32763 belong to the kernel backend's guest; fuzzed slots of address space 0 "
    "stay in the guest window or above 64 GiB",
    "guest accesses on a fifth vCPU of a VM": "the kernel backend's guest has 4 mailboxes per VM",
    "more than 1024 vCPUs (KVM_CAP_MAX_VCPUS)": "too slow to create per sequence",
    "MAP_ANONYMOUS on a guest_memfd fd": "the fd is ignored: plain anonymous memory, not guest_memfd",
    "private writable mappings above 1 GiB": "whether overcommit accounting refuses them (ENOMEM) depends on "
    "the host's RAM and swap, which the model does not know",
    "raw fd numbers": "fd numbers differ between the processes; bad fds are drawn as -1 and a plain memfd",
    "long-term GUP pins": "the kernel backend has no FOLL_LONGTERM pin on this host (no gup_test)",
}


@dataclass(frozen=True)
class Field:
    """One field of an operation: what hypothesis draws, and its JSON kind (int, bool, ref, optref, str)."""

    strategy: st.SearchStrategy[Any]
    kind: str
    choices: tuple[str, ...] = ()
    optional: bool = False  # may be absent from a saved sequence (then false): modifiers added later


def ints(*values: int, lo: int | None = None, hi: int | None = None) -> Field:
    """Integers: the listed values (the first shrinks best) and, with ``lo``/``hi``, any in that range."""
    parts: list[st.SearchStrategy[int]] = []
    if values:
        parts.append(st.sampled_from(values))
    if lo is not None and hi is not None:
        parts.append(st.integers(lo, hi))
    return Field(st.one_of(*parts), "int")


def choice(*names: str) -> Field:
    return Field(st.sampled_from(names), "str", names)


def pages_or(lo: int, hi: int, *specials: int) -> Field:
    """Two thirds page multiples (half of them among the first 16 pages, where the usual mapping is, so
    offsets and lengths reach deep paths), one third ``specials``."""
    small = st.integers(lo, min(hi, lo + 16)).map(lambda n: n * P)
    return Field(st.one_of(small, st.integers(lo, hi).map(lambda n: n * P), st.sampled_from(specials)), "int")


BOOL = Field(st.booleans(), "bool")
# how an offset is read (see :func:`at`): sequences saved before these existed replay with both false
FLAG = Field(st.booleans(), "bool", optional=True)
REF = Field(st.integers(0, 3), "ref")
OPTREF = Field(st.one_of(st.none(), st.integers(0, 3)), "optref")

# -- value ranges ------------------------------------------------------------------------------------------
U64 = 1 << 64
# offsets into a file or mapping: inside, at and past the end, unaligned, negative, huge, unrepresentable
OFFSETS = pages_or(0, 70, 0, 15 * P, 16 * P, 17 * P, 63 * P, 64 * P, 1, P - 1, P + 8, -P, -2 * P, 1 << 24,
                   1 << 30, 1 << 40, (1 << 63) - P, 1 << 63, U64 - P, U64, -(1 << 24))
# lengths: small, page multiples, unaligned, zero, negative, huge, unrepresentable
LENGTHS = pages_or(1, 70, P, 2 * P, 0, 1, P - 1, P + 1, -P, -1, 1 << 24, 1 << 30, 1 << 40, (1 << 63) - P, U64 - P,
                   U64)
PAGES = ints(1, 2, 4, 8, 16, 64, lo=1, hi=70)
SIZES = ints(16 * P, 64 * P, P, 2 * P, 4 * P, 8 * P, 0, P - 1, P + 1, -P, 1 << 30, 1 << 40, (1 << 63) - P,
             1 << 63, U64 - P, U64)
GMEM_FLAGS = ints(3, 1, 0, 2, 4, 7, 1 << 63, U64 - 1, U64, lo=0, hi=255)
SLOT_IDS = (0, 1, 2, 3, 4, 5, 7, 8, 100, 32762, 32763, 32764, 32767, 32768, 65535)
ADDRESS_SPACES = (0, 0, 0, 0, 1, 2, 0xFFFF)  # mostly address space 0, where slots can succeed
_SLOT = st.builds(lambda a, i: a << 16 | i, st.sampled_from(ADDRESS_SPACES), st.sampled_from(SLOT_IDS))
SLOTS = Field(st.one_of(_SLOT, _SLOT, _SLOT, st.sampled_from([-1, -(1 << 31), 1 << 32, 1 << 40, U64])), "int")
SLOT_FLAGS = ints(KVM_MEM_GUEST_MEMFD, KVM_MEM_GUEST_MEMFD, KVM_MEM_GUEST_MEMFD, 0, 0,
                  KVM_MEM_GUEST_MEMFD | KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
                  KVM_MEM_GUEST_MEMFD | KVM_MEM_READONLY, 8, 1 << 31, 1 << 32, lo=0, hi=15)
GPA_PAGES = ints(0, 4, 16, 32, 40, 64, lo=0, hi=80)
# absolute GPAs far above the kernel backend's guest window (never accessed by a vCPU)
FAR_GPAS = (1 << 36, (1 << 36) + (1 << 21), 1 << 40, (1 << 52) - P, 1 << 52, (1 << 63), U64 - P, U64)
VCPU_IDS = ints(0, 1, 2, 3, 4, 4095, 4096, 5000, 1 << 31, 1 << 32, 1 << 40, -1, U64 - 1, U64, lo=0, hi=8)
VM_TYPES_RAW = ints(-1, 2, 3, 4, 5, 31, 64, 1 << 32, 1 << 63, U64)
# every madvise advice Linux defines, unknown ones and unrepresentable ones (HWPOISON/SOFT_OFFLINE excluded)
# (those that change what is mapped or allocated are drawn twice as often: DONTNEED, REMOVE, POPULATE_READ/WRITE,
# DONTNEED_LOCKED, GUARD_INSTALL/REMOVE; the others only set VMA flags or are refused)
ADVICES = ints(4, 9, *range(0, 5), *range(8, 26), 102, 103, 5, 26, 99, -1, 1 << 32, 4, 9, 22, 23, 24, 102, 103)
PROTS = ints(3, 1, 0, 2, 4, 7, 8, -1)
MAP_FLAGS = ints(1, 2, 3, 1 | 0x8000, 1 | 0x4000, 0, 1 << 32)  # SHARED, PRIVATE, VALIDATE, POPULATE, NORESERVE
FALLOC_MODES = ints(*[FALLOC_FL_KEEP_SIZE, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE] * 8, 0, FALLOC_FL_PUNCH_HOLE,
                    FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE, 0x8, 0x10, 0x20, 0x40,
                    0x80, 0x100, 0x7F, 1 << 31, -1, 1 << 32)
MPOL_MODES = ints(0, 2, 3, 1, 4, 5, 6, 7, 9, 1 << 15 | 2, 1 << 13 | 3, -1, 1 << 32)
NODEMASKS = ints(0, 1, 1, 2, 3, 1 << 63, (1 << 64) - 1, 1 << 64, 1 << 100)
FILL_BYTES = ints(0xAA, 0, 1, 0xFF, -1, -128, 256, 300, -129)


@dataclass
class Child:
    """A forked child of the VMM process and what it inherited: the mappings and VM fds open at fork time."""

    process: Any
    maps: list[Any]
    vms: list[Any]


@dataclass
class World:
    """One side of a lockstep run: its backend (behind the recorder) and the objects it made, by kind."""

    system: Any
    gpa_base: int
    vms: list[Any] = field(default_factory=list)
    gmems: list[Any] = field(default_factory=list)
    maps: list[Any] = field(default_factory=list)
    vcpus: list[Any] = field(default_factory=list)  # vCPUs that can run guest accesses
    memfds: list[Any] = field(default_factory=list)
    vcpus_per_vm: dict[int, int] = field(default_factory=dict)
    pipes: list[Any] = field(default_factory=list)  # page references held by vmsplice'd pipes
    children: list[Child] = field(default_factory=list)
    hot: list[int] = field(default_factory=list)  # file offsets of pages recent operations used (newest first)
    # id(mapping) -> (the mapping, its offset in the file). The entry holds the mapping so its id cannot be
    # reused while the entry exists: keyed by a bare id(), a new anonymous mapping allocated where an unmapped
    # gmem mapping's object had been inherited its file offset on one side only (a flaky divergence after
    # 10,398 host sequences, seed 911)
    file_offsets: dict[int, tuple[Any, int]] = field(default_factory=dict)

    def items(self, kind: str) -> list[Any]:
        return {"vm": self.vms, "gmem": self.gmems, "map": self.maps, "vcpu": self.vcpus, "pipe": self.pipes,
                "child": self.children}[kind]

    def pick(self, kind: str, ref: int) -> Any | None:
        items = self.items(kind)
        return items[ref % len(items)] if items else None

    def gpa(self, page: int) -> int:
        return self.gpa_base + page * P

    def base(self, mapping: Any) -> int:
        """Where ``mapping`` starts in its file (0 for anonymous memory and for far offsets)."""
        entry = self.file_offsets.get(id(mapping))
        return entry[1] if entry is not None and entry[0] is mapping else 0


class NotRun(Exception):
    """The operation is not run on either side (e.g. it would take more real memory than ALLOC_CAP)."""


@dataclass(frozen=True)
class OpSpec:
    name: str
    target: str | None
    fields: dict[str, Field]
    run: Callable[..., None]
    weight: int = 1  # how many rules draw it: operations on memory get more of a sequence than queries
    when: Callable[[World], bool] | None = None  # drawn only while this holds (besides its target existing)

    def strategy(self) -> st.SearchStrategy[Op]:
        parts: dict[str, st.SearchStrategy[Any]] = {"op": st.just(self.name)}
        if self.target is not None:
            parts[self.target] = REF.strategy
        parts.update({k: f.strategy for k, f in self.fields.items()})
        return st.fixed_dictionaries(parts)

    def kinds(self) -> dict[str, Field]:
        out = dict(self.fields)
        if self.target is not None:
            out[self.target] = REF
        return out


OPS: dict[str, OpSpec] = {}


def op(name: str, target: str | None = None, weight: int = 1, when: Callable[[World], bool] | None = None,
       **fields: Field) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a handler as operation ``name`` (see the module docstring)."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        OPS[name] = OpSpec(name, target, fields, fn, weight, when)
        return fn

    return register


def run_op(w: World, o: Op) -> bool:
    """Apply operation ``o`` to one side; False when its target does not exist there (nothing ran). After an
    operation on a file or a mapping, :func:`observe_hot` looks at the page it used."""
    spec = OPS[o["op"]]
    if spec.target is None:
        spec.run(w, o)
        return True
    target = w.pick(spec.target, o[spec.target])
    if target is None:
        return False
    hot = w.hot
    try:
        spec.run(w, o, target)
    except OUTCOMES:
        if w.hot is not hot:  # a failing call may have done part of its work (MADV_REMOVE up to a guard)
            observe_hot(w)
        raise
    if w.hot is not hot:  # the operation used a page (see at())
        observe_hot(w)
    return True


def observe_hot(w: World) -> None:
    """Look at the page the operation just used, in every mapping of its file offset: whether a host PTE maps
    it (``/proc/self/pagemap``) and, where one does, the page's bytes through that mapping. Both are pure
    (a present PTE takes no fault), so a zap, populate, unmap or write that went wrong shows at once, and so
    does a mapping at another file offset that sees another page, instead of waiting for a later
    ``pte_present`` or read of the same page through the same mapping."""
    page = w.hot[0]
    for m in w.maps:
        offset = page - w.base(m)
        if 0 <= offset < m.length and m.pte_present(offset):
            try:
                m.read(offset, P)
            except OUTCOMES:  # e.g. SIGSEGV under PROT_NONE: logged by the recorder like any answer
                continue


def setup_ops(depth: int, type: int, size: int, flags: int, slot_pages: int, uaddr: bool) -> list[Op]:
    """The first ``depth`` steps of a usual start: a VM, a guest_memfd of ``size`` pages, its mapping, a
    memslot over its first ``slot_pages`` pages (userspace_addr the mapping or 0), a vCPU, a second VM."""
    steps: list[Op] = [
        {"op": "create_vm", "type": type},
        {"op": "create_gmem", "vm": 0, "size": size * P, "flags": flags},
        {"op": "mmap", "gmem": 0, "offset": 0, "pages": size, "prot": 3, "flags": 1, "huge": 0},
        {"op": "bind", "vm": 0, "slot": 1, "gpa_page": 0, "pages": slot_pages, "gmem": 0, "offset": 0,
         "flags": KVM_MEM_GUEST_MEMFD, "uaddr_map": 0 if uaddr else None, "far": False},
        {"op": "create_vcpu", "vm": 0, "id": 0},
    ]
    return steps[:depth]


def at(w: World, o: Op, size: int, base: int = 0) -> Any:
    """The op's offset: counted from the start, or with ``from_end`` back from ``size`` (the file's or the
    mapping's end), so ranges straddle ends as often as they start at 0. With ``hot`` it is instead the page of
    a recent operation's offset (the page another call just touched, punched or protected), so chains of
    operations on the same page are common. Every offset used joins the recent ones. Recent pages are file
    offsets: ``base`` is where a mapping starts in its file (see :meth:`World.base`), so a page written through
    one mapping is read through another mapping of the file at another offset, or punched with fallocate."""
    offset = o["offset"]
    if o.get("hot") and w.hot:
        offset = w.hot[offset % len(w.hot) if isinstance(offset, int) else 0] - base
    elif o.get("from_end") and isinstance(offset, int):
        offset = size - offset
    if isinstance(offset, int) and -(1 << 30) < offset < 1 << 30:
        w.hot = [(offset + base) & ~(P - 1), *w.hot[:7]]
    return offset


def _cap_alloc(length: int, what: str) -> None:
    if isinstance(length, int) and length > ALLOC_CAP:
        raise NotRun(f"{what} of {length:#x} bytes would allocate more than {ALLOC_CAP:#x} of real memory")


# -- the system (/dev/kvm) -------------------------------------------------------------------------------------
@op("create_vm", type=ints(0, 1, 2, 3))
def create_vm(w: World, o: Op) -> None:
    """KVM_CREATE_VM of one of the types the backend offers (KVM_CAP_VM_TYPES), chosen by index."""
    types = w.system.vm_types()
    w.vms.append(w.system.create_vm(int(types[o["type"] % len(types)])))


@op("create_vm_raw", type=VM_TYPES_RAW)
def create_vm_raw(w: World, o: Op) -> None:
    """KVM_CREATE_VM with a raw type value: unknown, unsupported here, negative, too wide."""
    w.vms.append(w.system.create_vm(o["type"]))


# the capabilities gmemlab models (gmemlab.uapi.Cap), numbers no kernel defines, and unrepresentable ones
CAPS = ints(*(int(c) for c in Cap), 1000, 1 << 31, -1, U64)


@op("check_extension", cap=CAPS)
def check_extension(w: World, o: Op) -> None:
    w.system.check_extension(o["cap"])


@op("mmap_anon", pages=PAGES)
def mmap_anon(w: World, o: Op) -> None:
    w.maps.append(w.system.mmap_anonymous(o["pages"] * P))


@op("memfd_create", pages=PAGES)
def memfd_create(w: World, o: Op) -> None:
    """A plain memfd: a file that is not a guest_memfd, for binding checks."""
    w.memfds.append(w.system.memfd_create(o["pages"] * P))


# -- VM ioctls -------------------------------------------------------------------------------------------------
@op("vm_check_extension", target="vm", cap=CAPS)
def vm_check_extension(w: World, o: Op, vm: Any) -> None:
    vm.check_extension(o["cap"])


@op("create_gmem", target="vm", size=SIZES, flags=GMEM_FLAGS)
def create_gmem(w: World, o: Op, vm: Any) -> None:
    w.gmems.append(vm.create_guest_memfd(o["size"], o["flags"]))


@op("bind", target="vm", weight=6, slot=SLOTS, gpa_page=GPA_PAGES, pages=PAGES, gmem=OPTREF, offset=OFFSETS,
    flags=SLOT_FLAGS, uaddr_map=OPTREF, far=BOOL)
def bind(w: World, o: Op, vm: Any) -> None:
    """KVM_SET_USER_MEMORY_REGION2. ``gmem`` None passes fd -1; a ref past the open guest_memfds passes a
    plain memfd when one exists. ``far`` places the slot at a GPA far above the guest window (never accessed
    by a vCPU). Address space 0 keeps out of the kernel backend's guest (see OUT_OF_REACH)."""
    slot = o["slot"]
    if isinstance(slot, int) and 0 <= slot < 1 << 32 and slot >> 16 == 0 and slot & 0xFFFF == 32763:
        raise NotRun("slot 32763 of address space 0 is the kernel backend's guest slot")
    gmem: Any = -1
    if o["gmem"] is not None:
        files = w.gmems + w.memfds
        gmem = files[o["gmem"] % len(files)] if files else -1
    uaddr = 0
    if o["uaddr_map"] is not None and w.maps:
        uaddr = w.maps[o["uaddr_map"] % len(w.maps)].address
    gpa = FAR_GPAS[o["gpa_page"] % len(FAR_GPAS)] if o["far"] else w.gpa(o["gpa_page"])
    vm.set_user_memory_region2(slot, o["flags"], gpa, o["pages"] * P, userspace_addr=uaddr, guest_memfd=gmem,
                               guest_memfd_offset=o["offset"])


@op("unbind", target="vm", slot=SLOTS)
def unbind(w: World, o: Op, vm: Any) -> None:
    slot = o["slot"]
    if isinstance(slot, int) and 0 <= slot < 1 << 32 and slot >> 16 == 0 and slot & 0xFFFF == 32763:
        raise NotRun("slot 32763 of address space 0 is the kernel backend's guest slot")
    vm.set_user_memory_region2(slot, 0, 0, 0)


@op("set_attrs", target="vm", gpa_page=GPA_PAGES, pages=PAGES, attrs=ints(KVM_MEMORY_ATTRIBUTE_PRIVATE, 0, 1, 4,
                                                                          1 << 63, U64))
def set_attrs(w: World, o: Op, vm: Any) -> None:
    """KVM_SET_MEMORY_ATTRIBUTES over pages of the guest window."""
    vm.set_memory_attributes(w.gpa(o["gpa_page"]), o["pages"] * P, o["attrs"])


@op("create_vcpu", target="vm", id=VCPU_IDS)
def create_vcpu(w: World, o: Op, vm: Any) -> None:
    """KVM_CREATE_VCPU; the first four of a VM can run guest accesses (the kernel backend's mailboxes)."""
    vcpu = vm.create_vcpu(o["id"])
    n = w.vcpus_per_vm.get(id(vm), 0)
    w.vcpus_per_vm[id(vm)] = n + 1
    if n < 4:
        w.vcpus.append(vcpu)


@op("close_vm", target="vm")
def close_vm(w: World, o: Op, vm: Any) -> None:
    vm.close()
    w.vms.remove(vm)


# -- vCPUs -----------------------------------------------------------------------------------------------------
@op("guest_read", target="vcpu", weight=6,
    gpa_page=GPA_PAGES, offset=ints(0, 8, P - 8, P - 4), length=ints(8, 1, 16, 64))
def guest_read(w: World, o: Op, vcpu: Any) -> None:
    vcpu.read(w.gpa(o["gpa_page"]) + o["offset"], o["length"])


@op("guest_write", target="vcpu", weight=6,
    gpa_page=GPA_PAGES, offset=ints(0, 8, P - 8, P - 4), byte=ints(0x5A, 1, 0xFF))
def guest_write(w: World, o: Op, vcpu: Any) -> None:
    vcpu.write(w.gpa(o["gpa_page"]) + o["offset"], bytes([o["byte"]]) * 8)


@op("close_vcpu", target="vcpu")
def close_vcpu(w: World, o: Op, vcpu: Any) -> None:
    vcpu.close()
    w.vcpus.remove(vcpu)


# -- guest_memfd files -----------------------------------------------------------------------------------------
@op("mmap", target="gmem", weight=6, offset=OFFSETS, pages=PAGES, prot=PROTS, flags=MAP_FLAGS,
    huge=ints(0, 1 << 30, 1 << 40))
def mmap(w: World, o: Op, g: Any) -> None:
    """mmap of the gmem: ``huge`` (when not 0) replaces the length, for mappings far larger than the file."""
    length, flags = o["huge"] or o["pages"] * P, o["flags"]
    if isinstance(flags, int) and flags & 0x8000:  # MAP_POPULATE
        _cap_alloc(length, "MAP_POPULATE")
    if isinstance(flags, int) and flags & 3 == 2 and o["prot"] & 2 and length > 1 << 30:
        raise NotRun("a private writable mapping above 1 GiB: overcommit accounting depends on the host's RAM")
    m = g.mmap(length, o["offset"], o["prot"], o["flags"])
    if isinstance(o["offset"], int) and 0 < o["offset"] < 1 << 30:
        w.file_offsets[id(m)] = (m, o["offset"])
    w.maps.append(m)


@op("fallocate", target="gmem", weight=6, from_end=FLAG, hot=FLAG, mode=FALLOC_MODES, offset=OFFSETS, length=LENGTHS)
def fallocate(w: World, o: Op, g: Any) -> None:
    mode, length = o["mode"], o["length"]
    if isinstance(mode, int) and not mode & FALLOC_FL_PUNCH_HOLE:
        _cap_alloc(length, "fallocate")
    g.fallocate(mode, at(w, o, g.size), length)


FILE_OPS: dict[str, Callable[[Any], Any]] = {
    "read": lambda g: g.read(8), "write": lambda g: g.write(b"x" * 8), "pread": lambda g: g.pread(8, 0),
    "pwrite": lambda g: g.pwrite(b"x", 0), "lseek": lambda g: g.lseek(0, 0), "lseek_end": lambda g: g.lseek(0, 2),
    "ftruncate": lambda g: g.ftruncate(2 * P), "ftruncate_same": lambda g: g.ftruncate(g.size),
    "ftruncate_neg": lambda g: g.ftruncate(-1), "fstat": lambda g: g.fstat(),
}


@op("file_op", target="gmem", which=choice(*FILE_OPS))
def file_op(w: World, o: Op, g: Any) -> None:
    FILE_OPS[o["which"]](g)


@op("set_attrs2", target="gmem", offset=OFFSETS, length=LENGTHS,
    attrs=ints(KVM_MEMORY_ATTRIBUTE_PRIVATE, 0, 0, 1, KVM_MEMORY_ATTRIBUTE_PRIVATE | 1, 1 << 63, U64),
    flags=ints(0, 0, 0, 1, 1 << 63, U64), error_offset=ints(0, 0xE0E0E0E0E0, U64),
    reserved=ints(-1, -1, -1, 0, 10))
def set_attrs2(w: World, o: Op, g: Any) -> None:
    """KVM_SET_MEMORY_ATTRIBUTES2 on the gmem (in-place conversion, linux-7.md 1.2; ENOTTY without it);
    ``reserved`` is the index of the one non-zero reserved word, -1 for none."""
    reserved = tuple(1 if i == o["reserved"] else 0 for i in range(11))
    g.set_memory_attributes2(o["offset"], o["length"], o["attrs"], flags=o["flags"], error_offset=o["error_offset"],
                             reserved=reserved)


@op("close_gmem", target="gmem")
def close_gmem(w: World, o: Op, g: Any) -> None:
    g.close()
    w.gmems.remove(g)


# -- host mappings ---------------------------------------------------------------------------------------------
@op("host_read", target="map", weight=6, offset=OFFSETS, from_end=FLAG, hot=FLAG, length=ints(1, 8, P, 2 * P, P + 1, 0))
def host_read(w: World, o: Op, m: Any) -> None:
    m.read(at(w, o, m.length, w.base(m)), o["length"])


@op("host_write", target="map", weight=6,
    offset=OFFSETS, from_end=FLAG, hot=FLAG, length=ints(1, 8, P, 2 * P, P + 1, 0), byte=ints(0xA5, 1, 0xFF))
def host_write(w: World, o: Op, m: Any) -> None:
    m.write(at(w, o, m.length, w.base(m)), bytes([o["byte"]]) * o["length"])


@op("host_fill", target="map", weight=6, offset=OFFSETS, from_end=FLAG, hot=FLAG,
    length=ints(1, P, 2 * P, 0), byte=FILL_BYTES)
def host_fill(w: World, o: Op, m: Any) -> None:
    m.fill(at(w, o, m.length, w.base(m)), o["length"], o["byte"])


@op("madvise", target="map", weight=6, offset=OFFSETS, from_end=FLAG, hot=FLAG, length=LENGTHS, advice=ADVICES)
def madvise(w: World, o: Op, m: Any) -> None:
    if o["advice"] in (22, 23):  # MADV_POPULATE_READ/WRITE fault pages in
        _cap_alloc(o["length"], "MADV_POPULATE")
    m.madvise(at(w, o, m.length, w.base(m)), o["length"], o["advice"])


@op("mprotect", target="map", weight=6,
    offset=OFFSETS, from_end=FLAG, hot=FLAG, length=LENGTHS, prot=ints(1, 3, 0, 2, 4, 7, 8, 16, 0x01000000,
                                                                        0x03000000, -1))
def mprotect(w: World, o: Op, m: Any) -> None:
    m.mprotect(at(w, o, m.length, w.base(m)), o["length"], o["prot"])


@op("mlock", target="map", weight=6, offset=OFFSETS, from_end=FLAG, hot=FLAG, length=LENGTHS, flags=ints(0, 1, 2, -1))
def mlock(w: World, o: Op, m: Any) -> None:
    """mlock2: faults the range in (unless MLOCK_ONFAULT), so its length is capped like an allocation."""
    if not (isinstance(o["flags"], int) and o["flags"] == 1):
        _cap_alloc(o["length"], "mlock")
    m.mlock(at(w, o, m.length, w.base(m)), o["length"], o["flags"])


@op("munlock", target="map", offset=OFFSETS, from_end=FLAG, hot=FLAG, length=LENGTHS)
def munlock(w: World, o: Op, m: Any) -> None:
    m.munlock(at(w, o, m.length, w.base(m)), o["length"])


@op("mbind", target="map", offset=OFFSETS, from_end=FLAG, hot=FLAG,
    length=LENGTHS, mode=MPOL_MODES, mask=NODEMASKS, flags=ints(0, 1, 2, 8))
def mbind(w: World, o: Op, m: Any) -> None:
    m.mbind(at(w, o, m.length, w.base(m)), o["length"], o["mode"], o["mask"], o["flags"])


@op("numa_query", target="map", weight=6, offset=OFFSETS, from_end=FLAG, hot=FLAG, pages=ints(1, 2, 4, 0))
def numa_query(w: World, o: Op, m: Any) -> None:
    offset = at(w, o, m.length, w.base(m))
    m.get_mempolicy(offset)
    m.page_nodes(offset, o["pages"])


@op("vmsplice", target="map", offset=ints(0, P, 2 * P, 15 * P, 16 * P, 64 * P, 1, -P), pages=ints(1, 2, 4))
def vmsplice(w: World, o: Op, m: Any) -> None:
    """vmsplice the pages into a pipe: references that make a conversion to private EAGAIN until closed."""
    w.pipes.append(m.vmsplice(o["offset"], o["pages"] * P))


@op("close_pipe", target="pipe")
def close_pipe(w: World, o: Op, pipe: Any) -> None:
    pipe.unpin()
    w.pipes.remove(pipe)


@op("pte_present", target="map", weight=4, offset=OFFSETS, from_end=FLAG, hot=FLAG)
def pte_present(w: World, o: Op, m: Any) -> None:
    """Whether the host PTE of a page is present (/proc/self/pagemap): after a punch, a conversion, a
    MADV_DONTNEED or a populate (often on the page a recent operation used)."""
    m.pte_present(at(w, o, m.length, w.base(m)))


@op("munmap", target="map")
def munmap(w: World, o: Op, m: Any) -> None:
    m.munmap()
    w.maps.remove(m)
    w.file_offsets.pop(id(m), None)


# -- generic file and fd operations on a guest_memfd -------------------------------------------------------------
@op("fsync", target="gmem", datasync=BOOL)
def fsync(w: World, o: Op, g: Any) -> None:
    g.fsync(o["datasync"])


@op("fchmod", target="gmem", mode=ints(0o600, 0o644, 0o7777, 0, -1))
def fchmod(w: World, o: Op, g: Any) -> None:
    g.fchmod(o["mode"])


@op("fchown", target="gmem", uid=ints(0, -1, 1000), gid=ints(0, -1, 1000))
def fchown(w: World, o: Op, g: Any) -> None:
    g.fchown(o["uid"], o["gid"])


@op("fadvise", target="gmem", from_end=FLAG, hot=FLAG,
    offset=OFFSETS, length=LENGTHS, advice=ints(4, 0, 1, 2, 3, 5, 6, -1, 1 << 31))
def fadvise(w: World, o: Op, g: Any) -> None:
    g.fadvise(at(w, o, g.size), o["length"], o["advice"])


@op("flock", target="gmem", operation=ints(2 | 4, 1, 2, 8, 1 | 4, 8 | 4, 0, 3, 16, -1))
def flock(w: World, o: Op, g: Any) -> None:
    g.flock(o["operation"])


# F_GETFD/F_SETFD/F_GETFL/F_SETFL/F_GETOWN/F_GETSIG/F_GETLEASE/F_NOTIFY/F_GETPIPE_SZ/F_ADD_SEALS/F_GET_SEALS/unknown
# (the per-fd F_GETFD/F_SETFD twice as often: dup()ed fds share the file's flags but not FD_CLOEXEC)
F_GETFD, F_GETFL = 1, 3
FCNTL_CMDS = ints(1, 2, 1, 2, 3, 4, 9, 11, 1025, 1026, 1032, 1033, 1034, 9999, -1)
FCNTL_ARGS = ints(0, 1, 1, 0o4000, 0o2000, 0o40000, 0o1000000, 0o20000, 1 | 8, -1)  # FD_CLOEXEC, O_*, seals


@op("fcntl", target="gmem", weight=3, cmd=FCNTL_CMDS, arg=FCNTL_ARGS)
def fcntl(w: World, o: Op, g: Any) -> None:
    """fcntl; when it succeeds, F_GETFD and F_GETFL of every open guest_memfd fd are read back (pure queries),
    so state that one fd's fcntl should not change on another (FD_CLOEXEC is per fd, O_* per file) shows."""
    g.fcntl(o["cmd"], o["arg"])
    for fd in w.gmems:
        fd.fcntl(F_GETFD)
        fd.fcntl(F_GETFL)


@op("dup", target="gmem", weight=2)
def dup(w: World, o: Op, g: Any) -> None:
    w.gmems.append(g.dup())


# -- a forked child of the VMM process (at most two per sequence: each is a real process on the kernel side) --
@op("fork", when=lambda w: len(w.children) < 2)
def fork(w: World, o: Op) -> None:
    """fork(): the child inherits the mappings and fds (guest_memfd files shared, VM ioctls EIO)."""
    w.children.append(Child(w.system.fork(), list(w.maps), list(w.vms)))


@op("child_write", target="child", weight=6,
    map=REF, offset=OFFSETS, from_end=FLAG, hot=FLAG, length=ints(1, 8, P, 2 * P), byte=ints(0xC3, 1))
def child_write(w: World, o: Op, child: Child) -> None:
    """A store by the child through its copy of a mapping the parent had at fork (shared memory: the parent
    sees it; private memory: copy on write; MADV_DONTFORK: not there)."""
    if not child.maps:
        raise NotRun("the child inherited no mapping")
    parent = child.maps[o["map"] % len(child.maps)]
    copy = child.process.mapping(parent)
    copy.write(at(w, o, copy.length, w.base(parent)), bytes([o["byte"]]) * o["length"])


@op("child_read", target="child", map=REF, offset=OFFSETS, from_end=FLAG, hot=FLAG, length=ints(8, 1, P, 2 * P))
def child_read(w: World, o: Op, child: Child) -> None:
    if not child.maps:
        raise NotRun("the child inherited no mapping")
    parent = child.maps[o["map"] % len(child.maps)]
    copy = child.process.mapping(parent)
    copy.read(at(w, o, copy.length, w.base(parent)), o["length"])


@op("child_vm_ioctl", target="child", vm=REF, which=choice("check_extension", "create_gmem"))
def child_vm_ioctl(w: World, o: Op, child: Child) -> None:
    """A VM ioctl the child issues on an inherited VM fd: EIO (kvm->mm != current->mm, realkernel #80)."""
    if not child.vms:
        raise NotRun("the child inherited no VM fd")
    vm = child.vms[o["vm"] % len(child.vms)]
    if o["which"] == "check_extension":
        child.process.check_extension(vm, int(Cap.GUEST_MEMFD_FLAGS))
    else:
        child.process.create_guest_memfd(vm, P, 3)


@op("child_exit", target="child")
def child_exit(w: World, o: Op, child: Child) -> None:
    child.process.exit()
    w.children.remove(child)

