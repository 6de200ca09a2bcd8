"""Shared setup for the HugeTLB tests: one VM, one HugeTLB guest_memfd bound at GPA 4 GiB, mmapped."""

from __future__ import annotations

from dataclasses import dataclass

from gmemlab.model import HostConfig, ModelBackend
from gmemlab.uapi import GUESTMEM_HUGETLB_FLAG_1GB, GUESTMEM_HUGETLB_FLAG_2MB, KVM_MEM_GUEST_MEMFD, VmType

P = 4096
M2 = 1 << 21
G1 = 1 << 30
SUPPORT_SHARED, INIT_PRIVATE, HUGETLB = 1, 2, 4
SIZE_FLAG = {M2: GUESTMEM_HUGETLB_FLAG_2MB, G1: GUESTMEM_HUGETLB_FLAG_1GB}
GPA = 1 << 32


@dataclass
class Env:
    backend: ModelBackend
    vm: object
    gmem: object
    mapping: object
    cpu: object
    size: int
    ps: int

    def metrics(self) -> dict:
        return self.backend.metrics()


def make(
    policy: str = "eager",
    ps: int = G1,
    nblocks: int = 2,
    init_private: bool = False,
    vm_type: VmType = VmType.SW_PROTECTED,
    gpa: int = GPA,
    **config: object,
) -> Env:
    cfg = HostConfig.upstream().with_(gmem_policy=policy, **config)
    b = ModelBackend("rfc-v2", cfg)
    vm = b.create_vm(int(vm_type))
    size = nblocks * ps
    flags = SUPPORT_SHARED | HUGETLB | SIZE_FLAG[ps] | (INIT_PRIVATE if init_private else 0)
    g = vm.create_guest_memfd(size, flags)
    m = g.mmap(size)
    vm.set_user_memory_region2(10, KVM_MEM_GUEST_MEMFD, gpa, size, userspace_addr=m.address, guest_memfd=g,
                               guest_memfd_offset=0)
    return Env(b, vm, g, m, vm.create_vcpu(0), size, ps)


def splits(m: dict) -> int:
    return m["splits"]["1G"] + m["splits"]["2M"]
