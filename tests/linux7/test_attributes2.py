"""The model's KVM_SET_MEMORY_ATTRIBUTES2 path against linux-7.md 1.2-1.3: the check order, step 9's side
effects (what is unmapped, invalidated, counted, locked) and what only the model can show."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gmemlab.errors import ConversionError, HostSigbus, KvmError
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.model.gmem_attributes import Attributes2
from gmemlab.uapi import KVM_MEM_GUEST_MEMFD, KVM_SET_MEMORY_ATTRIBUTES2, VmType

P = 4096
PRIVATE = 8
ON = HostConfig.upstream().with_(gmem_in_place_conversion=True)


def system(profile: str = "linux-7.4", config: HostConfig = ON) -> ModelBackend:
    return ModelBackend(profile, config)


def gmem(b: ModelBackend, vm_type: VmType = VmType.SW_PROTECTED, npages: int = 16, flags: int = 3):  # type: ignore[no-untyped-def]
    vm = b.create_vm(int(vm_type))
    return vm, vm.create_guest_memfd(npages * P, flags)


# -- the ten steps, in order ----------------------------------------------------------------------------------

def first_step(vm_type: VmType, a: Attributes2, i_size: int) -> int | None:
    """linux-7.md 1.2 written out independently: the first step that refuses ``a`` (None: it passes 2-8)."""
    checks = [
        (2, a.flags != 0),
        (3, any(a.reserved)),
        (4, not vm_type.has_private_mem),
        (5, a.attributes & ~PRIVATE != 0),
        (6, a.size == 0 or a.offset + a.size >= 1 << 64),
        (7, a.offset % P != 0 or a.size % P != 0),
        (8, a.offset >= i_size or a.offset + a.size > i_size),
    ]
    return next((step for step, bad in checks if bad), None)


u64s = st.one_of(st.sampled_from([0, 1, P, 15 * P, 16 * P, 17 * P, 0x64, (1 << 64) - P, 1 << 63, (1 << 62)]),
                 st.integers(0, (1 << 64) - 1))


@given(vm_type=st.sampled_from([VmType.DEFAULT, VmType.SW_PROTECTED, VmType.SNP]),
       flags=st.sampled_from([0, 0, 0, 1, 1 << 63]), rsv=st.sampled_from([(), (1,), (0,) * 10 + (1,)]),
       attributes=st.sampled_from([0, PRIVATE, PRIVATE, 1, PRIVATE | 1, 1 << 63]),
       offset=u64s, size=u64s)
def test_check_order(vm_type: VmType, flags: int, rsv: tuple[int, ...], attributes: int, offset: int,
                     size: int) -> None:
    """Whatever is wrong with the arguments, the model refuses at the first step linux-7.md lists."""
    b = system()
    _vm, g = gmem(b, vm_type)
    a = Attributes2(offset, size, attributes, flags, 0xE0E0E0E0E0, (*rsv, *(0,) * (11 - len(rsv))))
    want = first_step(vm_type, a, 16 * P)
    try:
        out = g.set_memory_attributes2(offset, size, attributes, flags, 0xE0E0E0E0E0, rsv)
    except ConversionError as exc:
        assert want is not None and exc.errno == errno.EINVAL, exc
        assert exc.reason.startswith(f"step {want}:"), (want, exc.reason)
        assert exc.error_offset == 0xE0E0E0E0E0
        return
    assert want is None and out == 0xE0E0E0E0E0


def test_enotty_before_efault_when_the_parameter_is_off() -> None:
    """Off: the gmem fd has no ioctl at all, so even a bad pointer is ENOTTY (realkernel-private.md B0
    3/attrs2_bad_pointer); on: the same pointer is step 1's EFAULT."""
    off = system(config=HostConfig.upstream().with_(gmem_in_place_conversion=False))
    _vm, g = gmem(off, flags=1)
    with pytest.raises(KvmError) as exc:
        g.ioctl(KVM_SET_MEMORY_ATTRIBUTES2, 0x10)
    assert exc.value.errno == errno.ENOTTY
    _vm, g = gmem(system())
    with pytest.raises(KvmError) as exc:
        g.ioctl(KVM_SET_MEMORY_ATTRIBUTES2, 0x10)
    assert exc.value.errno == errno.EFAULT and "step 1" in exc.value.reason


def test_raw_struct_in_process_memory_and_the_copy_back() -> None:
    """The struct read from a mapping of the modelled process; step 10's copy back into a read-only mapping
    faults: EFAULT on v13 (copies back on every error), the EINVAL itself on v8 (only for step-9 errors)."""
    for profile, want in (("linux-7.4", errno.EFAULT), ("linux-7.4-v8", errno.EINVAL)):
        b = system(profile)
        _vm, g = gmem(b)
        arg = b.mmap_anonymous(P)
        arg.write(0, Attributes2(0, P, PRIVATE).to_bytes())
        g.ioctl(KVM_SET_MEMORY_ATTRIBUTES2, arg.address)
        assert not g.inode.shareability.is_shared(0)
        arg.write(0, Attributes2(0, P, PRIVATE, flags=1).to_bytes())
        arg.prot = 1  # PROT_READ: the kernel can read the struct but not write it back
        with pytest.raises(KvmError) as exc:
            g.ioctl(KVM_SET_MEMORY_ATTRIBUTES2, arg.address)
        assert exc.value.errno == want, profile


# -- step 9 -------------------------------------------------------------------------------------------------

def bound(profile: str = "linux-7.4", npages: int = 4):  # type: ignore[no-untyped-def]
    b = system(profile)
    vm, g = gmem(b, npages=npages)
    m = g.mmap(npages * P)
    gpa = 1 << 32
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, gpa, npages * P, m.address, g, 0)
    return b, vm, g, m, vm.create_vcpu(0), gpa


def test_noop_neither_unmaps_nor_invalidates() -> None:
    b, vm, g, m, cpu, gpa = bound()
    m.write(0, b"\x01")
    cpu.read(gpa, 1)
    c = b.counters.counters
    unmaps: list[tuple[int, int]] = []
    original = g.inode.unmap_host
    g.inode.unmap_host = lambda s, e: (unmaps.append((s, e)), original(s, e))[1]  # type: ignore[method-assign]
    before = sum(c[f"gmem_invalidate_{f}"] for f in ("all", "shared", "private"))
    g.set_memory_attributes2(0, P, 0)
    assert unmaps == [] and sum(c[f"gmem_invalidate_{f}"] for f in ("all", "shared", "private")) == before
    assert m.pte_present(0) and vm.stage2.lookup(gpa >> 12) is not None
    assert c["conversion_noop"] == 1


def test_eagain_unmaps_the_host_but_leaves_the_guest_mappings() -> None:
    """Host PTEs go before the reference check (gone even after EAGAIN); guest mappings are invalidated only
    after it, so a refused conversion keeps them (they still agree with the unchanged attribute)."""
    b, vm, g, m, cpu, gpa = bound()
    m.write(P, b"\x02")
    cpu.read(gpa + P, 1)
    pipe = m.vmsplice(P, P)
    with pytest.raises(ConversionError) as exc:
        g.set_memory_attributes2(0, 2 * P, PRIVATE)
    assert exc.value.errno == errno.EAGAIN and exc.value.error_offset == P
    assert not m.pte_present(P) and vm.stage2.lookup((gpa >> 12) + 1) is not None
    assert b.counters.counters["gmem_invalidate_shared"] == 0
    pipe.unpin()
    g.set_memory_attributes2(0, 2 * P, PRIVATE)
    assert vm.stage2.lookup((gpa >> 12) + 1) is None and b.counters.counters["gmem_invalidate_shared"] == 1
    b.check_invariants()


def test_invalidation_filters_and_hooks() -> None:
    b, vm, g, m, cpu, gpa = bound()
    m.fill(0, 3 * P, 0x11)  # folios 0-2 allocated; 3 never
    g.set_memory_attributes2(0, 4 * P, PRIVATE)
    assert b.counters.counters["gmem_invalidate_shared"] == 1
    cpu.read(gpa, 1)
    cpu.read(gpa + 3 * P, 1)
    assert b.counters.counters["make_private"] == 2  # get_pfn on two private indices
    g.set_memory_attributes2(0, 4 * P, 0)
    assert b.counters.counters["gmem_invalidate_private"] == 1
    assert b.counters.counters["make_shared"] == 4  # one per folio present (3 host-faulted + 1 guest-faulted)
    cpu.read(gpa + 2 * P, 1)
    assert b.counters.counters["make_private"] == 2  # shared index: no make_private
    g.fallocate(3, 0, 2 * P)
    assert b.counters.counters["reclaim"] == 2 and b.counters.counters["gmem_invalidate_all"] == 1
    m.munmap()
    cpu.close()
    g.close()
    assert b.counters.counters["reclaim"] == 4  # release frees the two folios left


def test_enomem_by_fault_injection_changes_nothing() -> None:
    b, vm, g, m, cpu, gpa = bound()
    m.write(2 * P, b"\x22")
    b.inject_fault("mtree_preallocate")
    with pytest.raises(ConversionError) as exc:
        g.set_memory_attributes2(2 * P, 2 * P, PRIVATE)
    assert exc.value.errno == errno.ENOMEM and exc.value.error_offset == 2 * P
    assert m.pte_present(2 * P) and g.inode.shareability.is_shared(2)
    g.set_memory_attributes2(2 * P, 2 * P, PRIVATE)  # one failure only
    with pytest.raises(Exception, match="fault injection"):
        b.inject_fault("no_such_site")


def test_lru_drain_is_tried_once() -> None:
    """A reference held by a per-CPU LRU batch goes away with the drain; a pipe's does not."""
    b, vm, g, m, cpu, gpa = bound()
    m.fill(0, 2 * P, 0x33)
    g.inode.lru_batch_add(0, 2)
    g.set_memory_attributes2(0, P, PRIVATE)
    assert b.counters.counters["lru_drains"] == 1
    pipe = m.vmsplice(P, P)
    g.inode.lru_batch_add(0, 2)
    with pytest.raises(ConversionError, match="extra references"):
        g.set_memory_attributes2(P, P, PRIVATE)
    pipe.unpin()


def test_locks() -> None:
    """get_pfn and host faults run under invalidate_lock shared, conversion under it exclusive: a hook that
    faults back into guest_memfd during a conversion is caught as the deadlock it would be."""
    b, vm, g, m, cpu, gpa = bound()
    inode = g.inode
    seen = []
    original = inode._get_pfn

    def spy(index: int) -> None:
        seen.append(inode.invalidate_lock.held_by("kvm_gmem_get_pfn"))
        original(index)

    inode._get_pfn = spy  # type: ignore[method-assign]
    cpu.read(gpa, 1)
    assert seen == ["read"]
    m.write(0, b"\x01")
    g.set_memory_attributes2(0, P, PRIVATE)
    inode.arch_hook = lambda name, n=1: inode.kvm_gmem_get_pfn(0)  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="invalidate_lock taken shared while kvm_gmem_set_attributes"):
        g.set_memory_attributes2(0, P, 0)  # make_shared -> get_pfn: a deadlock in the kernel


def test_punch_keeps_the_attribute_and_private_reads_zero() -> None:
    b, vm, g, m, cpu, gpa = bound()
    g.set_memory_attributes2(0, P, PRIVATE)
    cpu.write(gpa, b"\x42")
    g.fallocate(3, 0, P)
    assert not g.inode.shareability.is_shared(0)
    assert cpu.read(gpa, 1) == b"\0"
    with pytest.raises(HostSigbus):
        m.read(0, 1)


def test_gmem_only_v13_vs_v8() -> None:
    """v13: every gmem slot is GMEM_ONLY with conversion on; v8: only MMAP files (finding 5)."""
    for profile, want in (("linux-7.4", True), ("linux-7.4-v8", False)):
        b = system(profile)
        vm, g = gmem(b, flags=0)
        vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, 1 << 32, 16 * P, 0, g, 0)
        assert vm.memslots[(0, 1)].gmem_only is want


def test_default_vm_gmem_is_never_private() -> None:
    """A default VM's gmem without INIT_SHARED starts PRIVATE in its tree, but a VM without private memory has
    no private gfns: its guest reads the gmem page (and cannot convert, step 4)."""
    b = system()
    vm, g = gmem(b, VmType.DEFAULT, flags=1)
    vm.set_user_memory_region2(1, KVM_MEM_GUEST_MEMFD, 1 << 32, 16 * P, 0, g, 0)
    assert vm.create_vcpu(0).read(1 << 32, 1) == b"\0"
