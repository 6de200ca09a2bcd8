"""KVM_SET_USER_MEMORY_REGION2 binding rules: realkernel.md rows #216-#260."""

from __future__ import annotations

import errno
import os

import pytest

from gmemlab import uapi
from gmemlab.errors import KvmError

P = uapi.PAGE_SIZE
MIB = 1 << 20
GMEM = uapi.KVM_MEM_GUEST_MEMFD


def _errno(fn, *args, **kw) -> int:
    try:
        fn(*args, **kw)
    except KvmError as exc:
        return exc.errno
    return 0


def test_bind_unbind_rows_216_217(vm):
    g = vm.create_guest_memfd(16 * P, 3)
    vm.set_user_memory_region2(1, GMEM, MIB, 16 * P, 0, g, 0)
    vm.set_user_memory_region2(1, GMEM, MIB, 0, 0, g, 0)


@pytest.mark.parametrize(
    ("what", "kw", "err"),
    [
        ("offset unaligned #218", {"guest_memfd_offset": 0x800}, errno.EINVAL),
        ("offset+size > file #219", {"guest_memfd_offset": 8 * P}, errno.EINVAL),
        ("offset == size #220", {"guest_memfd_offset": 16 * P}, errno.EINVAL),
        ("offset beyond #221", {"guest_memfd_offset": 32 * P}, errno.EINVAL),
        ("offset wraps #222", {"guest_memfd_offset": (1 << 64) - P}, errno.EINVAL),
        ("offset negative #223", {"guest_memfd_offset": 1 << 63}, errno.EINVAL),
        ("size unaligned #224", {"memory_size": 16 * P - 1}, errno.EINVAL),
        ("gpa unaligned #225", {"guest_phys_addr": MIB + 1}, errno.EINVAL),
        ("uaddr unaligned #226", {"userspace_addr": 0x1001}, errno.EINVAL),
        ("uaddr kernel half #227", {"userspace_addr": 0xFFFF800000000000}, errno.EINVAL),
        ("slot 32764 #228", {"slot": 32764}, errno.EINVAL),
        ("as id 2", {"slot": 1 | 2 << 16}, errno.EINVAL),
        ("GMEM|READONLY #230", {"flags": GMEM | uapi.KVM_MEM_READONLY}, errno.EINVAL),
        ("GMEM|LOG_DIRTY #231", {"flags": GMEM | uapi.KVM_MEM_LOG_DIRTY_PAGES}, errno.EINVAL),
        ("flag bit 3 #232", {"flags": GMEM | 8}, errno.EINVAL),
        ("gpa above MAXPHYADDR #233", {"guest_phys_addr": 1 << 60}, errno.EINVAL),
        ("guest_memfd -1 #234", {"guest_memfd": -1}, errno.EBADF),
        ("guest_memfd None", {"guest_memfd": None}, errno.EBADF),
    ],
)
def test_bind_rejections(vm, what, kw, err):
    g = vm.create_guest_memfd(16 * P, 3)
    args = {
        "slot": 1,
        "flags": GMEM,
        "guest_phys_addr": MIB,
        "memory_size": 16 * P,
        "userspace_addr": 0,
        "guest_memfd": g,
        "guest_memfd_offset": 0,
    }
    args.update(kw)
    assert _errno(vm.set_user_memory_region2, **args) == err, what


def test_bind_non_gmem_fds_rows_235_to_237(kb, vm):
    memfd = kb.memfd_create(16 * P)
    assert _errno(vm.set_user_memory_region2, 1, GMEM, MIB, 16 * P, 0, memfd, 0) == errno.EINVAL
    assert _errno(vm.set_user_memory_region2, 1, GMEM, MIB, 16 * P, 0, vm.fd, 0) == errno.EINVAL
    g = vm.create_guest_memfd(16 * P, 3)
    n = g.fd
    g.close()
    assert _errno(vm.set_user_memory_region2, 1, GMEM, MIB, 16 * P, 0, n, 0) == errno.EBADF


def test_v1_rejects_gmem_flag_row_238_and_ignores_fields_row_239(kb, vm):
    assert _errno(vm.set_user_memory_region, 1, GMEM, MIB, 16 * P, 0) == errno.EINVAL
    anon = kb.mmap_anonymous(16 * P)
    vm.set_user_memory_region2(1, 0, MIB, 16 * P, anon.address, 12345, 0x800)


def test_address_space_1_row_229(vm, facts):
    """Address space 1 exists only with CONFIG_KVM_SMM (KVM_CAP_MULTI_ADDRESS_SPACE = 2 on a default VM)."""
    g = vm.create_guest_memfd(16 * P, 3)
    spaces = vm.check_extension(uapi.Cap.MULTI_ADDRESS_SPACE)
    assert spaces == facts.cap(uapi.Cap.MULTI_ADDRESS_SPACE, uapi.VmType.DEFAULT)
    want = 0 if spaces >= 2 else errno.EINVAL  # #229 is the kvm_pvm host: no SMM, one address space
    assert _errno(vm.set_user_memory_region2, 1 | 1 << 16, GMEM, MIB, 16 * P, 0, g, 0) == want


def overlap_errno(facts) -> int:
    """A file range already bound to another slot: EINVAL up to 7.1, EEXIST from 7.2 (spec 2.6 step 8)."""
    return errno.EEXIST if facts.version >= (7, 2) else errno.EINVAL


def test_binding_sequence_rows_240_to_259(kb, vm, facts):
    a = vm.create_guest_memfd(64 * P, 3)
    other = vm.create_guest_memfd(64 * P, 3)
    overlap = overlap_errno(facts)
    vm.set_user_memory_region2(1, GMEM, MIB, 8 * P, 0, a, 0)  # 240
    assert _errno(vm.set_user_memory_region2, 2, GMEM, 2 * MIB, 8 * P, 0, a, 4 * P) == overlap  # 241
    assert _errno(vm.set_user_memory_region2, 2, GMEM, 2 * MIB, 8 * P, 0, a, 0) == overlap  # 242
    vm.set_user_memory_region2(2, GMEM, 2 * MIB, 8 * P, 0, a, 8 * P)  # 243
    assert _errno(vm.set_user_memory_region2, 3, GMEM, MIB + 4 * P, 8 * P, 0, other, 0) == errno.EEXIST
    assert _errno(vm.set_user_memory_region2, 1, GMEM, MIB, 8 * P, 0, a, 0) == errno.EINVAL  # 245
    assert _errno(vm.set_user_memory_region2, 1, GMEM, 4 * MIB, 8 * P, 0, a, 0) == errno.EINVAL  # 246
    assert _errno(vm.set_user_memory_region2, 1, GMEM | 1, MIB, 8 * P, 0, a, 0) == errno.EINVAL  # 247
    vm.set_user_memory_region2(1, GMEM, MIB, 0, 0, a, 0)  # 248
    assert _errno(vm.set_user_memory_region2, 1, GMEM, MIB, 0, 0, a, 0) == errno.EINVAL  # 249
    vm.set_user_memory_region2(4, GMEM, MIB, 8 * P, 0, a, 0)  # 250
    dup = os.dup(a.fd)
    try:
        assert _errno(vm.set_user_memory_region2, 5, GMEM, 8 * MIB, 8 * P, 0, dup, 0) == overlap  # 251
    finally:
        os.close(dup)
    vm2 = kb.create_vm()
    assert _errno(vm2.set_user_memory_region2, 1, GMEM, MIB, 8 * P, 0, a, 32 * P) == errno.EINVAL  # 252
    a.close()  # 256: slots stay
    vm.set_user_memory_region2(4, GMEM, MIB, 0, 0, None, 0)  # 257
    assert _errno(vm.set_user_memory_region2, 6, GMEM, 2 * MIB, 8 * P, 0, other, 0) == errno.EEXIST  # 258
    vm.set_user_memory_region2(2, GMEM, 2 * MIB, 0, 0, None, 0)
    vm.set_user_memory_region2(6, GMEM, 2 * MIB, 8 * P, 0, other, 0)  # 259


@pytest.mark.parametrize("flags", [0, 1, 2])
def test_bind_flags_without_uaddr_rows_253_to_255(vm, flags):
    g = vm.create_guest_memfd(16 * P, flags)
    vm.set_user_memory_region2(1, GMEM, MIB, 16 * P, 0, g, 0)


def test_bind_1gib_at_4gib_row_260(vm):
    g = vm.create_guest_memfd(1 << 30, 3)
    vm.set_user_memory_region2(20, GMEM, 4 << 30, 1 << 30, 0, g, 0)


def test_dropping_guest_memfd_flag_follows_the_release(kb, facts):
    """The model decides from the kernel's release whether a guest_memfd slot may be re-set without
    KVM_MEM_GUEST_MEMFD (upstream 9935df5333aa, 6.18.3; gmemlab.model.config.GMEM_FLAG_TOGGLE_FIXED_IN): the
    kernel under test must agree. Where it is accepted this exercises the use-after-free the fix closed."""
    from gmemlab.model.config import gmem_flag_toggle_accepted

    vm = kb.create_vm()
    g = vm.create_guest_memfd(4 * P, 0)
    vm.set_user_memory_region2(1, uapi.KVM_MEM_GUEST_MEMFD, 2 << 20, 4 * P, 0, g, 0)
    try:
        vm.set_user_memory_region2(1, 0, 2 << 20, 4 * P, 0, None, 0)
        accepted = True
    except KvmError as exc:
        assert exc.errno == errno.EINVAL
        accepted = False
    assert accepted is gmem_flag_toggle_accepted(facts.release_version), facts.release


def test_memslots_end_below_the_hosts_maxphyaddr_with_tdp(kb, facts):
    """kvm_mmu_max_gfn(): the host MAXPHYADDR with TDP (40 bits in the TCG lab VM), 52 under the shadow MMU;
    the model takes it from the facts (HostConfig.max_gpa_bits)."""
    from gmemlab.model import HostConfig

    bits = HostConfig.from_facts(facts).max_gpa_bits
    vm = kb.create_vm()
    anon = kb.mmap_anonymous(P)
    vm.set_user_memory_region(1, 0, (1 << bits) - P, P, anon.address)
    with pytest.raises(KvmError) as ei:
        vm.set_user_memory_region(2, 0, 1 << bits, P, anon.address)
    assert ei.value.errno == errno.EINVAL
