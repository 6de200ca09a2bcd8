"""Random operation sequences on the model (hypothesis RuleBasedStateMachine).

Operations: create VM/gmem, mmap, host read/write, pin/unpin, allocate, punch, bind, unbind, convert,
guest read/write, munmap, close. After every step the model's own invariants must hold, and an
independent oracle checks what a user can observe:

* contents: the last byte written at a file index, zero after a punch, preserved by conversion;
* host faults (SIGBUS) exactly where the oracle's shareability says private or beyond EOF;
* conversion to private fails with EAGAIN exactly when a pinned page lies in a range being converted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, rule

from gmemlab.errors import ConversionError, HostSigbus, HostSigsegv, KvmError, VcpuExit
from gmemlab.model import ModelBackend
from gmemlab.uapi import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, KVM_MEM_GUEST_MEMFD, PAGE_SIZE

P = PAGE_SIZE
GPA_BASE = 1 << 32


@dataclass
class InodeOracle:
    npages: int
    shared: set[int]
    data: dict[int, int] = field(default_factory=dict)
    pins: dict[int, int] = field(default_factory=dict)  # index -> count of live pins

    def host_ok(self, index: int) -> bool:
        return index < self.npages and index in self.shared


@dataclass
class Gmem:
    obj: object
    oracle: InodeOracle
    mmap_ok: bool


@dataclass
class Mapping:
    obj: object
    gmem: Gmem
    pgoff: int
    npages: int


@dataclass
class Pin:
    obj: object
    gmem: Gmem
    index: int


@dataclass
class Slot:
    vm: object
    id: int
    gmem: Gmem
    base: int  # gfn
    pgoff: int
    npages: int


class GmemMachine(RuleBasedStateMachine):
    profile = "linux-6.18"
    flag_choices: tuple[int, ...] = (0, 1, 2, 3)

    vms = Bundle("vms")
    gmems = Bundle("gmems")
    maps = Bundle("maps")
    pins = Bundle("pins")
    slots = Bundle("slots")

    def __init__(self) -> None:
        super().__init__()
        self.system = ModelBackend(self.profile)
        self.next_slot = 1
        self.live_slots: list[Slot] = []

    # -- creation --------------------------------------------------------------------------------------------
    @rule(target=vms)
    def create_vm(self) -> object:
        vm = self.system.create_vm(0)
        vm.vcpu = vm.create_vcpu(0)  # type: ignore[attr-defined]
        return vm

    @rule(target=gmems, vm=vms, npages=st.integers(1, 8), flags=st.sampled_from((0, 1, 2, 3)))
    def create_gmem(self, vm: object, npages: int, flags: int) -> object:
        try:
            g = vm.create_guest_memfd(npages * P, flags)  # type: ignore[attr-defined]
        except KvmError as exc:
            assert exc.errno == 22
            return multiple()
        inode = g.inode
        shared = set(range(npages)) if inode.shareability.is_shared(0) else set()
        self._check_initial_state(flags, bool(shared))
        return Gmem(g, InodeOracle(npages, shared), inode.behaviour.supports_mmap(flags))

    def _check_initial_state(self, flags: int, shared: bool) -> None:
        if self.profile == "linux-6.18":
            assert shared == bool(flags & 2)
        else:
            assert shared == (bool(flags & 1) and not flags & 2)

    @rule(target=maps, g=gmems, pgoff=st.integers(0, 9), npages=st.integers(1, 10))
    def mmap(self, g: Gmem, pgoff: int, npages: int) -> object:
        try:
            m = g.obj.mmap(npages * P, pgoff * P)  # type: ignore[attr-defined]
        except KvmError as exc:
            assert exc.errno in (19, 9), exc  # ENODEV without MMAP, EBADF after close
            assert not g.mmap_ok or not g.obj.fd_open  # type: ignore[attr-defined]
            return multiple()
        assert g.mmap_ok
        return Mapping(m, g, pgoff, npages)

    # -- host access ------------------------------------------------------------------------------------------
    @rule(m=maps, page=st.integers(0, 10), value=st.integers(1, 255), write=st.booleans())
    def host_access(self, m: Mapping, page: int, value: int, write: bool) -> None:
        if m.obj.unmapped:  # type: ignore[attr-defined]
            return
        index = m.pgoff + page
        oracle = m.gmem.oracle
        try:
            if write:
                m.obj.write(page * P, bytes([value]))  # type: ignore[attr-defined]
            else:
                got = m.obj.read(page * P, 1)  # type: ignore[attr-defined]
        except HostSigsegv:
            assert page >= m.npages
            return
        except HostSigbus:
            assert page < m.npages and not oracle.host_ok(index)
            return
        assert page < m.npages and oracle.host_ok(index), f"host access to index {index} must SIGBUS"
        if write:
            oracle.data[index] = value
        else:
            assert got == bytes([oracle.data.get(index, 0)])

    @rule(target=pins, m=maps, page=st.integers(0, 9))
    def pin(self, m: Mapping, page: int) -> object:
        if m.obj.unmapped or page >= m.npages:  # type: ignore[attr-defined]
            return multiple()
        index = m.pgoff + page
        try:
            p = m.obj.pin(page * P, P)  # type: ignore[attr-defined]
        except KvmError as exc:
            assert exc.errno == 14 and not m.gmem.oracle.host_ok(index)
            return multiple()
        assert m.gmem.oracle.host_ok(index)
        m.gmem.oracle.pins[index] = m.gmem.oracle.pins.get(index, 0) + 1
        return Pin(p, m.gmem, index)

    @rule(p=consumes(pins))
    def unpin(self, p: Pin) -> None:
        attached = bool(p.obj.attached)  # type: ignore[attr-defined]
        p.obj.unpin()  # type: ignore[attr-defined]
        if attached:
            p.gmem.oracle.pins[p.index] -= 1

    @rule(m=consumes(maps))
    def munmap(self, m: Mapping) -> None:
        m.obj.munmap()  # type: ignore[attr-defined]

    # -- fallocate ----------------------------------------------------------------------------------------------
    @rule(g=gmems, start=st.integers(0, 10), n=st.integers(0, 10), punch=st.booleans(), odd=st.booleans())
    def fallocate(self, g: Gmem, start: int, n: int, punch: bool, odd: bool) -> None:
        mode = FALLOC_FL_KEEP_SIZE | (FALLOC_FL_PUNCH_HOLE if punch else 0)
        offset, length = start * P + (1 if odd else 0), n * P
        oracle = g.oracle
        try:
            g.obj.fallocate(mode, offset, length)  # type: ignore[attr-defined]
        except KvmError as exc:
            expected_einval = odd or n == 0 or (not punch and start + n > oracle.npages)
            assert exc.errno in (22, 9) and (expected_einval or exc.errno == 9), exc
            return
        assert not odd and n > 0 and (punch or start + n <= oracle.npages)
        if punch:
            for i in range(start, start + n):
                oracle.data.pop(i, None)
                oracle.pins.pop(i, None)  # pinned folios leave the page cache

    # -- bindings and the guest ----------------------------------------------------------------------------------
    @rule(target=slots, vm=vms, g=gmems, pgoff=st.integers(0, 8), npages=st.integers(1, 8), gfn=st.integers(0, 64))
    def bind(self, vm: object, g: Gmem, pgoff: int, npages: int, gfn: int) -> object:
        if not g.obj.fd_open:  # type: ignore[attr-defined]
            return multiple()  # its fd number may now name another file (fd reuse), as in the kernel
        slot_id = self.next_slot
        self.next_slot += 1
        try:
            vm.set_user_memory_region2(  # type: ignore[attr-defined]
                slot_id, KVM_MEM_GUEST_MEMFD, GPA_BASE + gfn * P, npages * P, userspace_addr=0,
                guest_memfd=g.obj, guest_memfd_offset=pgoff * P,
            )
        except KvmError as exc:
            assert exc.errno in (22, 17, 9), exc
            return multiple()
        assert pgoff + npages <= g.oracle.npages
        assert g.obj.vm is vm  # type: ignore[attr-defined]
        slot = Slot(vm, slot_id, g, (GPA_BASE >> 12) + gfn, pgoff, npages)
        self.live_slots.append(slot)
        return slot

    @rule(s=consumes(slots))
    def unbind(self, s: Slot) -> None:
        s.vm.set_user_memory_region2(s.id, 0, s.base * P, 0)  # type: ignore[attr-defined]
        self.live_slots.remove(s)

    @rule(s=slots, page=st.integers(0, 8), value=st.integers(1, 255), write=st.booleans())
    def guest_access(self, s: Slot, page: int, value: int, write: bool) -> None:
        if page >= s.npages or s not in self.live_slots:
            return
        cpu = s.vm.vcpu  # type: ignore[attr-defined]
        gpa = (s.base + page) * P
        index = s.pgoff + page
        if not s.gmem.mmap_ok:
            return  # without MMAP the slot is served from userspace_addr (0 here): EFAULT, no data
        try:
            if write:
                cpu.write(gpa, bytes([value]))
            else:
                got = cpu.read(gpa, 1)
        except VcpuExit as exc:
            # A released file, or (RFC v2) a private index on a VM that cannot make private accesses.
            private = self.profile == "rfc-v2" and index not in s.gmem.oracle.shared
            assert exc.exit_reason == 39 and (s.gmem.obj.released or private), exc  # type: ignore[attr-defined]
            assert exc.flags == 0 and exc.gpa == gpa
            return
        assert not s.gmem.obj.released  # type: ignore[attr-defined]
        assert self.profile == "linux-6.18" or index in s.gmem.oracle.shared
        if write:
            s.gmem.oracle.data[index] = value
        else:
            assert got == bytes([s.gmem.oracle.data.get(index, 0)])

    # -- close -------------------------------------------------------------------------------------------------------
    @rule(g=gmems)
    def close_gmem(self, g: Gmem) -> None:
        if g.obj.fd_open:  # type: ignore[attr-defined]
            g.obj.close()  # type: ignore[attr-defined]

    @invariant()
    def model_invariants_hold(self) -> None:
        self.system.check_invariants()


class RfcMachine(GmemMachine):
    profile = "rfc-v2"

    @rule(g=GmemMachine.gmems, start=st.integers(0, 9), n=st.integers(0, 9), to_shared=st.booleans())
    def convert(self, g: Gmem, start: int, n: int, to_shared: bool) -> None:
        oracle = g.oracle
        rng = range(start, start + n)
        work = [i for i in rng if (i in oracle.shared) != to_shared]
        try:
            g.obj.convert(start * P, n * P, to_shared)  # type: ignore[attr-defined]
        except ConversionError as exc:
            assert exc.errno == 11 and not to_shared
            bad = exc.error_offset // P
            assert oracle.pins.get(bad, 0) > 0 and bad in work
            assert not any(oracle.pins.get(i, 0) for i in work if i < bad)
            return
        except KvmError as exc:
            assert exc.errno in (22, 9) and (start + n > oracle.npages or exc.errno == 9), exc
            return
        if n and start + n > oracle.npages:
            raise AssertionError("conversion past EOF must fail")
        if not g.mmap_ok:
            return  # no shareability tracking: silently succeeds, nothing changes
        if not to_shared:
            assert not any(oracle.pins.get(i, 0) for i in work), "pinned page converted"
        oracle.shared = oracle.shared | set(rng) if to_shared else oracle.shared - set(rng)

    @rule(g=GmemMachine.gmems)
    def host_view_matches_oracle(self, g: Gmem) -> None:
        inode = g.obj.inode  # type: ignore[attr-defined]
        if not g.mmap_ok or not inode.files:
            return
        for i in range(g.oracle.npages):
            assert inode.shareability.is_shared(i) == (i in g.oracle.shared)


SETTINGS = settings(max_examples=200, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

TestLinux618Stateful = GmemMachine.TestCase
TestLinux618Stateful.settings = SETTINGS
TestRfcStateful = RfcMachine.TestCase
TestRfcStateful.settings = SETTINGS
