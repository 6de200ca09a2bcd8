"""Splits, merges and stage-2 bytes per level for the HugeTLB policies (the huge-pages issue's closing note).

Two workloads on a 1 GiB HugeTLB guest_memfd, each run under every policy and initial state:

* ``non-coco``: workloads.md 5.1. A 64 GiB non-CoCo guest (DEFAULT VM), memory shared (the RFC default,
  or the private-default variant with INIT_SHARED): the VMM writes a 32 MiB kernel+initrd through the
  mmap, the guest touches all of its memory, host devices touch one 4 KiB page every 64 MiB.
* ``snp``: an SNP-like conversion pattern after workloads.md 1.2 / 5.2-5.3. FALLOC of the whole file;
  4 MiB firmware written through the mmap (converted shared first, private after); the guest lazily
  accepts [0, 4 GiB) in 4 MiB chunks (convert private + private faults, PVALIDATE at 2M); a 1 GiB
  swiotlb at an unaligned GPA below 4 GiB (0x7f003000) converted shared and touched by guest and host;
  16 GHCB pages (one per vCPU, 32 MiB apart in the per-CPU areas of the 1 GiB folio at 3 GiB [assumed
  placement]) converted shared and touched by both; then the rest of memory accepted in 4 MiB chunks
  and finally all memory touched again (a memory-hungry workload). Stage-2 columns are what is mapped
  at the end.

Initial states: ``shared`` (RFC default), ``INIT_PRIVATE`` (RFC flag), ``private`` (the merged default:
``HostConfig.default_private`` with no flag; ``non-coco`` uses its INIT_SHARED flag instead).

    python bench/hugepages_table.py [--guest-gib 64] [--json] [--workload non-coco|snp|all]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from gmemlab.model import HostConfig, ModelBackend
from gmemlab.model.policy import POLICIES
from gmemlab.uapi import (
    FALLOC_FL_KEEP_SIZE,
    GUESTMEM_HUGETLB_FLAG_1GB,
    KVM_MEM_GUEST_MEMFD,
    VmType,
)

P, M2, G1 = 1 << 12, 1 << 21, 1 << 30
SUPPORT_SHARED, INIT_BIT, HUGETLB = 1, 2, 4
STATES = {  # name -> (default_private config, bit 1 set)
    "shared": (False, False),
    "INIT_PRIVATE": (False, True),
    "private": (True, False),
}


def _setup(policy: str, state: str, size: int, vm_type: VmType) -> tuple:
    default_private, bit1 = STATES[state]
    if vm_type == VmType.DEFAULT and state != "shared":  # a non-CoCo guest needs shared memory
        if state == "INIT_PRIVATE":
            return None
        bit1 = True  # private default + INIT_SHARED
    cfg = HostConfig.upstream().with_(gmem_policy=policy, default_private=default_private)
    backend = ModelBackend("rfc-v2", cfg)
    vm = backend.create_vm(int(vm_type))
    flags = SUPPORT_SHARED | HUGETLB | GUESTMEM_HUGETLB_FLAG_1GB | (INIT_BIT if bit1 else 0)
    gmem = vm.create_guest_memfd(size, flags)
    mapping = gmem.mmap(size)
    vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 0, size, userspace_addr=mapping.address, guest_memfd=gmem,
                               guest_memfd_offset=0)
    return backend, vm, gmem, mapping, vm.create_vcpu(0)


def non_coco(policy: str, state: str, size: int) -> dict | None:
    env = _setup(policy, state, size, VmType.DEFAULT)
    if env is None:
        return None
    backend, _vm, _gmem, mapping, cpu = env
    mapping.fill(1 << 20, 32 << 20, 0x90)  # kernel + initrd [assumed 32 MiB]
    cpu.touch(0, size)
    for off in range(0, size, 64 << 20):  # scattered virtio/vhost DMA
        mapping.write(off + 0x7000, b"d")
    return backend.metrics()


def snp(policy: str, state: str, size: int, vcpus: int = 16) -> dict | None:
    backend, _vm, gmem, mapping, cpu = _setup(policy, state, size, VmType.SNP)
    chunk = 4 << 20

    def accept(lo: int, hi: int) -> None:
        for off in range(lo, hi, chunk):  # 1 PSC (2 x 2M) -> 1 exit -> convert private; PVALIDATE 2 x 2M
            gmem.convert(off, chunk, False)
            cpu.touch(off, chunk)

    gmem.fallocate(FALLOC_FL_KEEP_SIZE, 0, size)
    fw = 0xFFC00000
    gmem.convert(fw, 4 << 20, True)  # populate in place (Vishal's recipe; a no-op when shared)
    mapping.fill(fw, 4 << 20, 0x5A)
    gmem.convert(fw, 4 << 20, False)
    accept(0, min(4 * G1, size))
    swiotlb = 0x7F003000  # 1 GiB, 4K-aligned, not 2M-aligned, below 4 GiB
    gmem.convert(swiotlb, G1, True)
    cpu.touch(swiotlb, G1)
    for off in range(swiotlb, swiotlb + G1, 64 * P):  # the device side of bounce buffering
        mapping.write(off, b"s")
    for i in range(vcpus):
        ghcb = min(3 * G1, size - G1) + i * (32 << 20) + 0x5000  # per-CPU areas, in accepted memory
        gmem.convert(ghcb, P, True)
        cpu.touch(ghcb, P)
        mapping.write(ghcb, b"g")
    accept(min(4 * G1, size), size)
    cpu.touch(0, size)  # the workload touches all of its memory again: zapped ranges fault back in
    return backend.metrics()


WORKLOADS: dict[str, Callable[[str, str, int], dict | None]] = {"non-coco": non_coco, "snp": snp}
POLICY_ORDER = ["eager", "eager+merge-never", "eager+staged", "deferred", "deferred+direct"]


def gib(n: int) -> str:
    return f"{n / G1:.3f}" if n else "0"


def row(workload: str, policy: str, state: str, m: dict, seconds: float) -> dict:
    return {
        "workload": workload,
        "policy": policy,
        "init": state,
        "splits_1G": m["splits"]["1G"],
        "splits_2M": m["splits"]["2M"],
        "merges_1G": m["merges"]["1G"],
        "merges_2M": m["merges"]["2M"],
        "stage2_GiB_4K": m["stage2_mapped_bytes"]["4K"],
        "stage2_GiB_2M": m["stage2_mapped_bytes"]["2M"],
        "stage2_GiB_1G": m["stage2_mapped_bytes"]["1G"],
        "faults": m["guest_faults"],
        "host_GiB_4K/2M/1G": "/".join(gib(m["host_map_bytes"][k]) for k in ("4K", "2M", "1G")),
        "vmemmap_peak_MiB": m["vmemmap_peak_bytes"] >> 20,
        "psmash": m["arch"].get("psmash", 0),
        "eagain": m["conversions"]["eagain"],
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guest-gib", type=int, default=64)
    ap.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    size = args.guest_gib * G1
    rows = []
    for workload, fn in WORKLOADS.items():
        if args.workload not in ("all", workload):
            continue
        for policy in POLICY_ORDER:
            assert policy in POLICIES
            for state in STATES:
                t0 = time.perf_counter()
                m = fn(policy, state, size)
                if m is not None:
                    rows.append(row(workload, policy, state, m, time.perf_counter() - t0))
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    cols = list(rows[0])
    for workload in dict.fromkeys(r["workload"] for r in rows):
        print(f"\n## {workload} ({args.guest_gib} GiB, 1 GiB HugeTLB)\n")
        print("| " + " | ".join(c for c in cols[1:]) + " |")
        print("|" + "---|" * (len(cols) - 1))
        for r in rows:
            if r["workload"] == workload:
                cells = [gib(v) if c.startswith("stage2_GiB") else str(v) for c, v in r.items()][1:]
                print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
