"""Differential fuzzing: random operation sequences run on two backends, identical observations required.

A sequence is a list of JSON-able operations (create a VM of any type the backend offers, or a
guest_memfd with random sizes and flags, mmap, host read/write, fallocate allocate/punch, bind/unbind with
random offsets and sizes, per-VM memory attribute changes, guest read/write, munmap, close in random
order). Objects are referred to by creation order, so a sequence
replays on any backend. :func:`run_sequence` executes one through the observation recorder; two
backends agree when their logs are equal. Hypothesis generates and shrinks the sequences, so a
divergence is reported as a minimal sequence, printed as JSON that ``gmemlab fuzz --replay`` re-runs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, given, seed, settings

from ..backend import PROT_READ, PROT_WRITE, Backend
from ..errors import HostSigbus, HostSigsegv, KvmError, UnsupportedByBackend, VcpuExit
from ..uapi import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SIZE,
)
from .record import Observation, Recorder

P = PAGE_SIZE
Op = dict[str, Any]
BackendFactory = Callable[[], Backend]

# -----------------------------------------------------------------------------------------------------
# Generation
# -----------------------------------------------------------------------------------------------------

# Mostly valid values with a share of invalid ones, so sequences get past creation and reach the
# interesting paths (binding, faults, punches under mappings) while errors stay covered.
_sizes = st.sampled_from([P, 2 * P, 4 * P, 4 * P, 8 * P, 16 * P, 16 * P, 64 * P, 0, P - 1, P + 1, -P, 1 << 63])
_flags = st.one_of(st.sampled_from([3, 3, 3, 3, 1, 1, 0, 2]), st.integers(0, 63).map(lambda b: 1 << b))
_modes = st.sampled_from(
    [FALLOC_FL_KEEP_SIZE, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, FALLOC_FL_PUNCH_HOLE,
     FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE]
)
_pages = st.integers(0, 20)
_ref = st.integers(0, 3)


def _offset() -> st.SearchStrategy[int]:
    return st.sampled_from([0, 0, 0, P, 2 * P, 3 * P, 4 * P, 8 * P, 15 * P, 16 * P, 20 * P, 1, P - 1, -P])


OPERATIONS: dict[str, st.SearchStrategy[Op]] = {
    # "type" picks among the VM types the backend offers (KVM_CAP_VM_TYPES), by index.
    "create_vm": st.fixed_dictionaries({"op": st.just("create_vm"), "type": st.integers(0, 3)}),
    "set_attrs": st.fixed_dictionaries({"op": st.just("set_attrs"), "vm": _ref, "gpa_page": st.integers(0, 48),
                                        "pages": st.sampled_from([1, 1, 2, 4, 16]), "private": st.booleans()}),
    "create_gmem": st.fixed_dictionaries({"op": st.just("create_gmem"), "vm": _ref, "size": _sizes,
                                          "flags": _flags}),
    "mmap": st.fixed_dictionaries({"op": st.just("mmap"), "gmem": _ref, "offset": _offset(),
                                   "pages": st.integers(1, 20), "private": st.booleans(),
                                   "prot": st.sampled_from([3, 3, 3, 1, 0])}),
    "mmap_anon": st.fixed_dictionaries({"op": st.just("mmap_anon"), "pages": st.sampled_from([4, 16])}),
    "madvise": st.fixed_dictionaries({"op": st.just("madvise"), "map": _ref, "offset": _pages.map(lambda n: n * P),
                                      "pages": st.integers(1, 4), "advice": st.sampled_from([4, 9])}),
    "mbind": st.fixed_dictionaries({"op": st.just("mbind"), "map": _ref, "offset": _pages.map(lambda n: n * P),
                                    "pages": st.integers(1, 4), "mode": st.sampled_from([0, 2, 3, 1, 4, 9]),
                                    "mask": st.sampled_from([0, 1, 1, 2, 3])}),
    "numa_query": st.fixed_dictionaries({"op": st.just("numa_query"), "map": _ref,
                                         "offset": _pages.map(lambda n: n * P),
                                         "pages": st.integers(1, 4)}),
    "file_op": st.fixed_dictionaries({"op": st.just("file_op"), "gmem": _ref,
                                      "which": st.sampled_from(["read", "write", "pread", "pwrite", "lseek",
                                                                "ftruncate", "fstat"])}),
    "host_write": st.fixed_dictionaries({"op": st.just("host_write"), "map": _ref,
                                         "offset": st.integers(0, 21 * P), "byte": st.integers(1, 255),
                                         "length": st.integers(1, 2 * P)}),
    "host_read": st.fixed_dictionaries({"op": st.just("host_read"), "map": _ref,
                                        "offset": st.integers(0, 21 * P), "length": st.integers(1, 2 * P)}),
    "fallocate": st.fixed_dictionaries({"op": st.just("fallocate"), "gmem": _ref, "mode": _modes,
                                        "offset": _offset(), "length": _offset()}),
    "bind": st.fixed_dictionaries({
        "op": st.just("bind"), "vm": _ref, "slot": st.integers(1, 4), "gpa_page": st.sampled_from([0, 4, 16, 32, 40]),
        "pages": st.sampled_from([1, 2, 4, 8, 16]), "gmem": _ref, "offset": _offset(),
        "flags": st.sampled_from([KVM_MEM_GUEST_MEMFD, KVM_MEM_GUEST_MEMFD, 0,
                                  KVM_MEM_GUEST_MEMFD | KVM_MEM_LOG_DIRTY_PAGES]),
        "uaddr_map": st.one_of(st.none(), _ref)}),
    "unbind": st.fixed_dictionaries({"op": st.just("unbind"), "vm": _ref, "slot": st.integers(1, 4)}),
    "guest_read": st.fixed_dictionaries({"op": st.just("guest_read"), "vm": _ref, "gpa_page": st.integers(0, 48),
                                         "offset": st.sampled_from([0, 8, P - 8])}),
    "guest_write": st.fixed_dictionaries({"op": st.just("guest_write"), "vm": _ref,
                                          "gpa_page": st.integers(0, 48), "offset": st.sampled_from([0, 8, P - 8]),
                                          "byte": st.integers(1, 255)}),
    "munmap": st.fixed_dictionaries({"op": st.just("munmap"), "map": _ref}),
    "close_gmem": st.fixed_dictionaries({"op": st.just("close_gmem"), "gmem": _ref}),
    "close_vm": st.fixed_dictionaries({"op": st.just("close_vm"), "vm": _ref}),
}


def sequences(max_ops: int = 25) -> st.SearchStrategy[list[Op]]:
    """Sequences that usually start with a VM, a mapped guest_memfd and a memslot bound to it (so guest
    and host accesses reach real memory), then mix every operation."""
    body = st.lists(st.one_of(*OPERATIONS.values()), min_size=1, max_size=max_ops)
    prelude = st.fixed_dictionaries({
        "size": st.sampled_from([16 * P, 64 * P]), "flags": st.sampled_from([3, 3, 1, 0, 2]),
        "slot_pages": st.sampled_from([4, 16]), "uaddr": st.sampled_from([0, None]),
        "type": st.integers(0, 3),
    }).map(lambda p: [
        {"op": "create_vm", "type": p["type"]},
        {"op": "create_gmem", "vm": 0, "size": p["size"], "flags": p["flags"]},
        {"op": "mmap", "gmem": 0, "offset": 0, "pages": 16, "private": False},
        {"op": "bind", "vm": 0, "slot": 1, "gpa_page": 0, "pages": p["slot_pages"], "gmem": 0, "offset": 0,
         "flags": KVM_MEM_GUEST_MEMFD, "uaddr_map": p["uaddr"]},
    ])
    short = st.tuples(OPERATIONS["create_vm"], OPERATIONS["create_gmem"].map(lambda o: {**o, "vm": 0})).map(list)
    return st.builds(lambda head, tail: [*head, *tail], st.one_of(prelude, prelude, short), body)


# -----------------------------------------------------------------------------------------------------
# Execution
# -----------------------------------------------------------------------------------------------------

@dataclass
class _World:
    system: Any
    gpa_base: int
    vms: list[Any] = field(default_factory=list)
    vcpus: dict[int, Any] = field(default_factory=dict)
    gmems: list[Any] = field(default_factory=list)
    maps: list[Any] = field(default_factory=list)

    def pick(self, items: list[Any], ref: int) -> Any | None:
        return items[ref % len(items)] if items else None


def _gpa_base(backend: Any) -> int:
    lo, hi = (int(x) for x in backend.guest_gpa_window())
    base = max(lo, 1 << 32) if hi >= (1 << 32) + (1 << 24) else lo
    return (base + (1 << 21) - 1) & ~((1 << 21) - 1)


def _create_vm(w: _World, op: Op) -> None:
    types = w.system.vm_types()
    w.vms.append(w.system.create_vm(int(types[op.get("type", 0) % len(types)])))


def _set_attrs(w: _World, op: Op, vm: Any) -> None:
    """KVM_SET_MEMORY_ATTRIBUTES on the VM: PRIVATE or shared over a few pages of the fuzzed GPA range."""
    vm.set_memory_attributes(w.gpa_base + op["gpa_page"] * P, op["pages"] * P,
                             KVM_MEMORY_ATTRIBUTE_PRIVATE if op["private"] else 0)


def _create_gmem(w: _World, op: Op, vm: Any) -> None:
    w.gmems.append(vm.create_guest_memfd(op["size"], op["flags"]))


def _mmap(w: _World, op: Op, g: Any) -> None:
    flags = 2 if op["private"] else 1  # MAP_PRIVATE / MAP_SHARED
    w.maps.append(g.mmap(op["pages"] * P, op["offset"], op.get("prot", PROT_READ | PROT_WRITE), flags))


def _mmap_anon(w: _World, op: Op) -> None:
    w.maps.append(w.system.mmap_anonymous(op["pages"] * P))


def _host_access(w: _World, op: Op, m: Any) -> None:
    length = max(0, min(op["length"], m.length + P - op["offset"]))
    if op["op"] == "host_write":
        m.write(op["offset"], bytes([op["byte"]]) * length)
    else:
        m.read(op["offset"], length)


def _madvise(w: _World, op: Op, m: Any) -> None:
    if op["offset"] < m.length:
        m.madvise(op["offset"], min(op["pages"] * P, m.length - op["offset"]), op["advice"])


def _numa(w: _World, op: Op, m: Any) -> None:
    if op["offset"] >= m.length:
        return
    length = min(op["pages"] * P, m.length - op["offset"])
    if op["op"] == "mbind":
        m.mbind(op["offset"], length, op["mode"], op["mask"])
    else:
        m.get_mempolicy(op["offset"])
        m.page_nodes(op["offset"], length // P or 1)


_FILE_OPS: dict[str, Callable[[Any], Any]] = {
    "read": lambda g: g.read(8), "write": lambda g: g.write(b"x" * 8), "pread": lambda g: g.pread(8, 0),
    "pwrite": lambda g: g.pwrite(b"x", 0), "lseek": lambda g: g.lseek(0, 0), "ftruncate": lambda g: g.ftruncate(2 * P),
    "fstat": lambda g: g.fstat(),
}


def _file_op(w: _World, op: Op, g: Any) -> None:
    _FILE_OPS[op["which"]](g)


def _fallocate(w: _World, op: Op, g: Any) -> None:
    g.fallocate(op["mode"], op["offset"], op["length"])


def _bind(w: _World, op: Op, vm: Any) -> None:
    g = w.pick(w.gmems, op["gmem"])
    if g is None:
        return
    m = w.pick(w.maps, op["uaddr_map"]) if op["uaddr_map"] is not None else None
    vm.set_user_memory_region2(op["slot"], op["flags"], w.gpa_base + op["gpa_page"] * P, op["pages"] * P,
                               userspace_addr=m.address if m is not None else 0, guest_memfd=g,
                               guest_memfd_offset=op["offset"])


def _unbind(w: _World, op: Op, vm: Any) -> None:
    vm.set_user_memory_region2(op["slot"], 0, 0, 0)


def _guest_access(w: _World, op: Op, vm: Any) -> None:
    if id(vm) not in w.vcpus:
        w.vcpus[id(vm)] = vm.create_vcpu(0)
    gpa = w.gpa_base + op["gpa_page"] * P + op["offset"]
    if op["op"] == "guest_read":
        w.vcpus[id(vm)].read(gpa, 8)
    else:
        w.vcpus[id(vm)].write(gpa, bytes([op["byte"]]) * 8)


def _munmap(w: _World, op: Op, m: Any) -> None:
    m.munmap()
    w.maps.remove(m)


def _close_gmem(w: _World, op: Op, g: Any) -> None:
    g.close()
    w.gmems.remove(g)


def _close_vm(w: _World, op: Op, vm: Any) -> None:
    if id(vm) in w.vcpus:
        w.vcpus.pop(id(vm)).close()
    vm.close()
    w.vms.remove(vm)


# op -> (the list its target is picked from, keyed by the op field naming it; None: no target), handler
_HANDLERS: dict[str, tuple[str | None, Callable[..., None]]] = {
    "create_vm": (None, _create_vm), "mmap_anon": (None, _mmap_anon),
    "create_gmem": ("vm", _create_gmem), "bind": ("vm", _bind), "unbind": ("vm", _unbind),
    "set_attrs": ("vm", _set_attrs),
    "guest_read": ("vm", _guest_access), "guest_write": ("vm", _guest_access), "close_vm": ("vm", _close_vm),
    "mmap": ("gmem", _mmap), "fallocate": ("gmem", _fallocate), "file_op": ("gmem", _file_op),
    "close_gmem": ("gmem", _close_gmem),
    "host_write": ("map", _host_access), "host_read": ("map", _host_access), "madvise": ("map", _madvise),
    "mbind": ("map", _numa), "numa_query": ("map", _numa), "munmap": ("map", _munmap),
}


def _step(w: _World, op: Op) -> None:
    """Apply one operation; an operation whose target does not exist (yet, or any more) is skipped."""
    try:
        kind, handler = _HANDLERS[op["op"]]
    except KeyError:
        raise ValueError(f"unknown fuzz operation {op['op']!r}") from None
    if kind is None:
        handler(w, op)
        return
    items = {"vm": w.vms, "gmem": w.gmems, "map": w.maps}[kind]
    target = w.pick(items, op[kind])
    if target is not None:
        handler(w, op, target)


EXPECTED = (KvmError, HostSigbus, HostSigsegv, VcpuExit)


def run_sequence(factory: BackendFactory, ops: list[Op]) -> list[Observation]:
    """Run ``ops`` on a fresh backend; returns the observation log (errors are observations too)."""
    backend = factory()
    recorder = Recorder()
    world = _World(recorder.wrap(backend, "kvm"), _gpa_base(backend))
    try:
        for op in ops:
            with contextlib.suppress(*EXPECTED):  # already recorded by the proxy; the sequence goes on
                _step(world, op)
    finally:
        for vcpu in world.vcpus.values():
            _quietly(vcpu.close)
        for m in world.maps:
            _quietly(m.munmap)
        for g in world.gmems:
            _quietly(g.close)
        for vm in world.vms:
            _quietly(vm.close)
        backend.close()
    return recorder.log


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except (*EXPECTED, UnsupportedByBackend):
        pass


@dataclass
class FuzzDivergence:
    ops: list[Op]
    index: int
    left: str
    right: str

    def replayable(self) -> str:
        return json.dumps(self.ops)


def first_divergence(a: list[Observation], b: list[Observation]) -> tuple[int, str, str] | None:
    for i in range(max(len(a), len(b))):
        left = str(a[i]) if i < len(a) else "(nothing)"
        right = str(b[i]) if i < len(b) else "(nothing)"
        if left != right:
            return i, left, right
    return None


def compare_sequence(left: BackendFactory, right: BackendFactory, ops: list[Op]) -> FuzzDivergence | None:
    found = first_divergence(run_sequence(left, ops), run_sequence(right, ops))
    return None if found is None else FuzzDivergence(ops, *found)


@dataclass
class FuzzReport:
    sequences: int = 0
    operations: int = 0
    divergence: FuzzDivergence | None = None
    skipped: str = ""


def fuzz(left: BackendFactory, right: BackendFactory, examples: int, seed_value: int = 0,
         max_ops: int = 25, progress: Callable[[int], None] | None = None) -> FuzzReport:
    """Run ``examples`` hypothesis-generated sequences on both backends; stop at the first divergence and
    shrink it to a minimal sequence."""
    report = FuzzReport()
    failing: list[FuzzDivergence] = []

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink),
              report_multiple_bugs=False)
    @given(sequences(max_ops))
    def check(ops: list[Op]) -> None:
        report.sequences += 1
        report.operations += len(ops)
        if progress:
            progress(report.sequences)
        div = compare_sequence(left, right, ops)
        if div is not None:
            failing.append(div)
            raise AssertionError(f"divergence at call {div.index}")

    with contextlib.suppress(AssertionError):
        check()
    if failing:
        # Hypothesis re-runs the shrunk example last; it is the minimal one.
        report.divergence = min(failing, key=lambda d: len(d.ops))
    return report


def load_sequence(text: str) -> list[Op]:
    """Parse a replayable sequence (JSON list of operations) with errors that say what is wrong."""
    try:
        ops = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(ops, list) or not all(isinstance(o, dict) and "op" in o for o in ops):
        raise ValueError("a sequence is a JSON list of objects, each with an 'op' key")
    for i, o in enumerate(ops):
        if o["op"] not in OPERATIONS:
            raise ValueError(f"operation {i}: unknown op {o['op']!r} (known: {', '.join(OPERATIONS)})")
        missing = REQUIRED_KEYS[o["op"]] - set(o)
        if missing:
            raise ValueError(f"operation {i} ({o['op']}): missing {', '.join(sorted(missing))}")
        bad = [k for k in REQUIRED_KEYS[o["op"]] - {"op", "uaddr_map", "private", "which"}
               if not isinstance(o[k], int)]
        if bad:
            raise ValueError(f"operation {i} ({o['op']}): {', '.join(bad)} must be integers")
    return ops


REQUIRED_KEYS: dict[str, set[str]] = {
    "create_vm": {"op"},
    "set_attrs": {"op", "vm", "gpa_page", "pages", "private"},
    "create_gmem": {"op", "vm", "size", "flags"},
    "mmap": {"op", "gmem", "offset", "pages", "private"},
    "mmap_anon": {"op", "pages"},
    "madvise": {"op", "map", "offset", "pages", "advice"},
    "file_op": {"op", "gmem", "which"},
    "mbind": {"op", "map", "offset", "pages", "mode", "mask"},
    "numa_query": {"op", "map", "offset", "pages"},
    "host_write": {"op", "map", "offset", "byte", "length"},
    "host_read": {"op", "map", "offset", "length"},
    "fallocate": {"op", "gmem", "mode", "offset", "length"},
    "bind": {"op", "vm", "slot", "gpa_page", "pages", "gmem", "offset", "flags", "uaddr_map"},
    "unbind": {"op", "vm", "slot"},
    "guest_read": {"op", "vm", "gpa_page", "offset"},
    "guest_write": {"op", "vm", "gpa_page", "offset", "byte"},
    "munmap": {"op", "map"},
    "close_gmem": {"op", "gmem"},
    "close_vm": {"op", "vm"},
}
