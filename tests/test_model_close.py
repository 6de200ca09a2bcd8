"""ModelBackend.close() releases what the backend holds, like the kernel backend's close() does."""

from __future__ import annotations

from gmemlab.model import HostConfig, ModelBackend
from gmemlab.uapi import GUESTMEM_HUGETLB_FLAG_2MB, KVM_MEM_GUEST_MEMFD, GmemFlagsRfc2, VmType

M2 = 1 << 21


def _workload(system: ModelBackend) -> None:
    """The kernel hygiene test's shape: VMs, vCPUs, files, mappings, a pin, a memfd, one VM closed early."""
    vm = system.create_vm(int(VmType.SW_PROTECTED))
    flags = GmemFlagsRfc2.SUPPORT_SHARED | GmemFlagsRfc2.HUGETLB | GUESTMEM_HUGETLB_FLAG_2MB
    g = vm.create_guest_memfd(4 * M2, int(flags))
    m = g.mmap(4 * M2)
    m.write(0, b"x")
    m.pin(0, 4096)
    vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 1 << 32, 4 * M2, m.address, g, 0)
    cpu = vm.create_vcpu(0)
    cpu.write(1 << 32, b"hello")
    system.mmap_anonymous(M2).write(0, b"anon")
    system.memfd_create(4096)
    system.create_vm(0).create_vcpu(1)
    vm.close()  # the vCPU, gmem and mappings stay open: close() must release them


def test_close_releases_everything() -> None:
    config = HostConfig.upstream()
    system = ModelBackend("rfc-v2", config)
    pool_before = dict(system.hugetlb_pool.free)
    _workload(system)
    assert system.hugetlb_pool.free != pool_before
    system.close()
    assert system.closed
    assert system.fdtable.files == {}
    assert system.address_space.vmas == []
    assert system.vms == []
    assert system.inodes() == []
    assert system.hugetlb_pool.free == pool_before
    assert system.stats["pages_freed_at_release"] == M2 // 4096  # the one 2 MiB folio the writes allocated
    system.close()  # idempotent


def test_context_manager_closes() -> None:
    with ModelBackend("rfc-v2") as system:
        _workload(system)
    assert system.closed and system.fdtable.files == {} and system.vms == []


def test_close_can_fail_on_a_seeded_leak(monkeypatch) -> None:
    """The assertions above can fail: a munmap that forgets the mapping leaves the file and its pool pages."""
    from gmemlab.model.host import ModelHostMapping

    monkeypatch.setattr(ModelHostMapping, "munmap", lambda self: None)
    system = ModelBackend("rfc-v2")
    pool_before = dict(system.hugetlb_pool.free)
    _workload(system)
    system.close()
    assert system.address_space.vmas != [] and system.hugetlb_pool.free != pool_before
