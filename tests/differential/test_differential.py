"""The model against the running kernel: every conformance case of the kernel's own profile (read from it:
linux-6.18 on this machine, linux-7.3 on the CI's Debian 7.3.4 under QEMU), a fuzz run, and the divergences
found on the way kept as regression sequences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.conformance import cases_for, compare, run_case
from gmemlab.conformance.fuzz import compare_sequence, fuzz, load_sequence


def _kernel_profile() -> str:
    """The running kernel's profile (KernelBackend reads it from uname and /sys/module/kvm/parameters)."""
    from gmemlab.errors import UnsupportedByBackend
    from gmemlab.kernel import open_kernel_backend

    try:
        backend = open_kernel_backend()
    except UnsupportedByBackend:
        return "linux-6.18"  # every test here skips (conftest.py says why)
    backend.close()
    return backend.profile.name


KERNEL_PROFILE = _kernel_profile()
CASES = cases_for(KERNEL_PROFILE)


@pytest.fixture(scope="module")
def factories():  # type: ignore[no-untyped-def]
    from gmemlab.kernel import open_kernel_backend
    from gmemlab.model import HostConfig, ModelBackend

    probe = open_kernel_backend()
    config = HostConfig.from_backend(probe)
    probe.close()
    return ((lambda p=KERNEL_PROFILE: ModelBackend(p, config)), (lambda p=KERNEL_PROFILE: open_kernel_backend()))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_agrees_with_kernel(factories, case) -> None:  # type: ignore[no-untyped-def]
    model, kernel = factories
    a = run_case(case, model, "model", KERNEL_PROFILE)
    b = run_case(case, kernel, "kernel", KERNEL_PROFILE)
    assert compare(a, b) == [], "\n".join(f"{d.model}  !=  {d.kernel}" for d in compare(a, b))
    if "skip" in (a.status, b.status):
        # one side skipping what the other ran is a coverage gap, never agreement
        assert a.status == b.status, f"coverage gap: model {a.status} ({a.detail}), kernel {b.status} ({b.detail})"
        pytest.skip(b.detail)
    assert (a.status, b.status) == ("pass", "pass"), (a.detail, b.detail)


# Sequences the fuzzer found diverging, kept after the model (or the kernel client) was fixed.
_MAP16 = {"op": "mmap", "gmem": 0, "offset": 0, "pages": 16, "prot": 3, "flags": 1, "huge": 0}
_GMEM = {"op": "create_gmem", "vm": 0, "size": 65536, "flags": 3}
_VM = {"op": "create_vm", "type": 0}
def _mprotect(offset: int, length: int, prot: int) -> dict[str, object]:
    return {"op": "mprotect", "map": 1, "offset": offset, "length": length, "prot": prot, "hot": False,
            "from_end": False}


def _write(offset: int) -> dict[str, object]:
    return {"op": "host_write", "map": 1, "offset": offset, "length": 8, "byte": 9, "hot": False, "from_end": False}


def _read(offset: int) -> dict[str, object]:
    return {"op": "host_read", "map": 1, "offset": offset, "length": 8, "hot": False, "from_end": False}


def _slot_read(pre: list[dict[str, object]], flags: int, reads: tuple[int, ...]) -> list[dict[str, object]]:
    """A 2-page shared anonymous mapping (its guard after it at offset 8192), ``pre``, a classic memslot over it
    from gfn 13 (``flags``: 1 dirty logging, 2 read-only), a vCPU, and 8-byte guest reads of gfns ``reads``."""
    return [{"op": "create_vm", "type": 0}, {"op": "mmap_anon", "pages": 2}, *pre,
            {"gpa_page": 13, "uaddr_map": 0, "vm": 0, "gmem": None, "pages": 64, "flags": flags, "op": "bind",
             "far": False, "offset": 0, "slot": 8},
            {"id": 5, "op": "create_vcpu", "vm": 0},
            *({"gpa_page": g, "offset": 0, "op": "guest_read", "length": 8, "vcpu": 1} for g in reads)]



REGRESSIONS = [
    # mmap: offset + length beyond MAX_LFS_FILESIZE is EOVERFLOW (file_mmap_ok), before ->mmap
    [_VM, _GMEM, {**_MAP16, "offset": -4096, "pages": 1}],
    # MADV_REMOVE punches through a mapping after the fd was closed
    [_VM, _GMEM, _MAP16, {"op": "bind", "vm": 0, "slot": 1, "gpa_page": 0, "pages": 4, "gmem": 0, "offset": 0,
                          "flags": 4, "uaddr_map": 0, "far": False},
     {"op": "close_gmem", "gmem": 0}, {"op": "madvise", "advice": 9, "offset": 0, "length": 4096, "map": 0}],
    # a second MMIO read on a vCPU was served from the first one's completion (kernel client: RCX=0 left
    # mmio_read_completed set)
    [_VM, {"op": "create_vcpu", "id": 0, "vm": 0},
     {"op": "guest_read", "gpa_page": 0, "length": 8, "offset": 0, "vcpu": 0},
     {"op": "guest_read", "gpa_page": 0, "length": 1, "offset": 0, "vcpu": 0}],
    # a store to a read-only page past EOF is SIGSEGV (the VMA's write permission is checked first)
    [_VM, _GMEM, {**_MAP16, "offset": 65536, "pages": 1},
     {"op": "mprotect", "length": 4096, "map": 0, "offset": 0, "prot": 1},
     {"op": "host_fill", "byte": 170, "length": 1, "map": 0, "offset": 0}],
    # move_pages over a mapping's guard: -ENOENT for the PROT_NONE page, not EFAULT for the call
    [{"op": "mmap_anon", "pages": 1}, {"op": "numa_query", "map": 0, "offset": 0, "pages": 2}],
    # mbind's mode is an int to the kernel (kernel_mbind): 2**32 is MPOL_DEFAULT
    [_VM, _GMEM, {**_MAP16, "pages": 1},
     {"op": "mbind", "flags": 0, "length": 4096, "map": 0, "mask": 0, "mode": 1 << 32, "offset": 0}],
    # MAP_POPULATE maps the file's pages at mmap time (do_mmap -> mm_populate), up to EOF, read-only too
    [_VM, _GMEM, {**_MAP16, "offset": 6 * 4096, "prot": 1, "flags": 0x8001},
     {"op": "pte_present", "map": 0, "offset": 3 * 4096}, {"op": "pte_present", "map": 0, "offset": 10 * 4096}],
    # vmsplice of a PROT_WRITE-only mapping is EFAULT: GUP reads need VM_READ (check_vma_flags), although the
    # CPU could read the page
    [_VM, _GMEM, {**_MAP16, "prot": 2}, {"op": "vmsplice", "map": 0, "offset": 0, "pages": 1}],
    # vmsplice running past the mapping into its guard faults in the pages before the guard, then EFAULT
    [_VM, _GMEM, {**_MAP16, "pages": 4}, {"op": "vmsplice", "map": 0, "offset": 1, "pages": 4},
     {"op": "pte_present", "map": 0, "offset": 3 * 4096}],
    # MADV_FREE leaves private anonymous pages mapped (they go only under memory reclaim)
    [_VM, _GMEM, {**_MAP16, "pages": 4}, {"op": "mprotect", "map": 0, "offset": -4096, "length": 4096, "prot": 3},
     {"op": "host_write", "map": 0, "offset": -4096, "length": 8, "byte": 1},
     {"op": "madvise", "map": 0, "offset": -4096, "length": 4096, "advice": 8},
     {"op": "pte_present", "map": 0, "offset": -4096}, {"op": "host_read", "map": 0, "offset": -4096, "length": 8}],
    # move_pages says -EFAULT for a private anonymous page that was only read (the zero page), a node once written
    [{"op": "mmap_anon", "pages": 1}, {"op": "mprotect", "map": 0, "offset": 4096, "length": 8192, "prot": 3},
     {"op": "host_read", "map": 0, "offset": 4096, "length": 1},
     {"op": "host_write", "map": 0, "offset": 8192, "length": 1, "byte": 1},
     {"op": "numa_query", "map": 0, "offset": 4096, "pages": 2}],
    # a read fault on shared anonymous memory (shmem) maps the cached pages around it, within its 16-page block
    # (or from its VMA's start: MADV_RANDOM on page 2 splits the VMA) and its VMA; guest_memfd does not
    [{"op": "mmap_anon", "pages": 32}, {"op": "host_write", "map": 0, "offset": 4096, "length": 8, "byte": 1},
     {"op": "host_write", "map": 0, "offset": 81920, "length": 8, "byte": 1},
     {"op": "host_write", "map": 0, "offset": 57344, "length": 8, "byte": 1},
     {"op": "madvise", "map": 0, "offset": 0, "length": 131072, "advice": 4},
     {"op": "madvise", "map": 0, "offset": 8192, "length": 4096, "advice": 1},
     {"op": "host_read", "map": 0, "offset": 61440, "length": 1}, {"op": "pte_present", "map": 0, "offset": 4096},
     {"op": "pte_present", "map": 0, "offset": 57344}, {"op": "pte_present", "map": 0, "offset": 81920},
     {"op": "host_read", "map": 0, "offset": 12288, "length": 1}, {"op": "pte_present", "map": 0, "offset": 4096}],
    [_VM, _GMEM, _MAP16, {"op": "host_write", "map": 0, "offset": 4096, "length": 8, "byte": 1},
     {"op": "madvise", "map": 0, "offset": 0, "length": 65536, "advice": 4},
     {"op": "host_read", "map": 0, "offset": 0, "length": 1}, {"op": "pte_present", "map": 0, "offset": 4096}],
    # MADV_PAGEOUT unmaps shmem pages (reclaim unmaps before writeout; they stay cached), not guest_memfd's
    [{"op": "mmap_anon", "pages": 4}, {"op": "host_read", "map": 0, "offset": 4096, "length": 8},
     {"op": "madvise", "map": 0, "offset": 4096, "length": 4096, "advice": 21},
     {"op": "pte_present", "map": 0, "offset": 4096}],
    [_VM, _GMEM, _MAP16, {"op": "host_read", "map": 0, "offset": 4096, "length": 8},
     {"op": "madvise", "map": 0, "offset": 4096, "length": 4096, "advice": 21},
     {"op": "pte_present", "map": 0, "offset": 4096}],
    # a clean shmem page (only read) leaves the page cache on MADV_PAGEOUT: fault-around no longer maps it; a
    # dirty one stays; GUP (vmsplice, MADV_POPULATE_READ) faults around as a CPU read does
    [{"op": "mmap_anon", "pages": 28}, {"op": "host_read", "map": 0, "offset": 49152, "length": 8},
     {"op": "host_write", "map": 0, "offset": 53248, "length": 8, "byte": 1},
     {"op": "madvise", "map": 0, "offset": 49152, "length": 8192, "advice": 21},
     {"op": "vmsplice", "map": 0, "offset": 8192, "pages": 1}, {"op": "numa_query", "map": 0, "offset": 49152,
                                                                "pages": 2},
     {"op": "madvise", "map": 0, "offset": 0, "length": 65536, "advice": 4},
     {"op": "madvise", "map": 0, "offset": 16384, "length": 4096, "advice": 22},
     {"op": "numa_query", "map": 0, "offset": 49152, "pages": 2}],
    # ... but a page already mapped goes through GUP-fast, which checks the PTE only (readable on x86)
    [{"op": "mmap_anon", "pages": 4}, {"op": "host_write", "map": 0, "offset": 4096, "length": 8, "byte": 1},
     {"op": "mprotect", "map": 0, "offset": 0, "length": 16384, "prot": 2},
     {"op": "vmsplice", "map": 0, "offset": 4096, "pages": 1}, {"op": "vmsplice", "map": 0, "offset": 8192,
                                                                "pages": 1}],
    # vmsplice runs on into a guard made readable (the reservation is one address space)
    [{"op": "mmap_anon", "pages": 16}, {"op": "mprotect", "map": 0, "offset": 0, "length": 249856, "prot": 7},
     {"op": "vmsplice", "map": 0, "offset": 61440, "pages": 4}],
    # a guest access through a classic slot's userspace_addr faults the page into the VMM's page tables (GUP)
    [_VM, _GMEM, {**_MAP16, "pages": 4}, {"op": "create_vcpu", "vm": 0, "id": 0},
     {"op": "bind", "vm": 0, "slot": 2, "flags": 1, "gpa_page": 23, "gmem": None, "uaddr_map": 0, "far": False,
      "pages": 4, "offset": 0},
     {"op": "guest_write", "vcpu": 0, "gpa_page": 23, "offset": 0, "byte": 1},
     {"op": "numa_query", "map": 0, "offset": 0, "pages": 2}],
    # kernel client: a CPU access made in a forked child must see a MADV_DONTFORK page (SIGBUS here: gmem without
    # INIT_SHARED), not the child's missing VMA (SIGSEGV)
    [{"op": "create_vm", "type": 1}, {"op": "create_gmem", "vm": 0, "size": 65536, "flags": 1},
     {"op": "mmap", "gmem": 0, "offset": 0, "pages": 16, "prot": 3, "flags": 1, "huge": 0},
     {"offset": 40960, "hot": True, "advice": 10, "length": 4096, "from_end": False, "map": 1, "op": "madvise"},
     {"from_end": False, "op": "host_write", "map": 3, "byte": 165, "hot": True, "length": 8192, "offset": 32768}],
    # moving a slot above kvm_mmu_max_gfn() is EINVAL, as creating it there is (kvm_arch_prepare_memory_region
    # checks KVM_MR_MOVE too; found after 11,318 host sequences, seed 903)
    [{"op": "create_vm", "type": 3},
     {"vm": 0, "slot": 0, "op": "bind", "gpa_page": 12, "pages": 1, "flags": 0, "offset": 16384, "gmem": None,
      "uaddr_map": None, "far": False},
     {"op": "bind", "vm": 0, "slot": 0, "offset": 0, "pages": 1, "gmem": 0, "gpa_page": 4, "flags": 0,
      "uaddr_map": None, "far": True}],
    # MPOL_MF_STRICT alone with a misplaced page: EIO and no policy set (strictly_unmovable() stops the walk
    # before mbind_range(); found after 7,807 host sequences, seed 907)
    [{"pages": 18, "op": "mmap_anon"},
     {"length": 8192, "from_end": True, "op": "host_write", "map": 3, "offset": 28672, "byte": 255, "hot": False},
     {"mode": 1, "offset": 53248, "op": "mbind", "mask": 0, "hot": False, "length": 188416, "from_end": True,
      "flags": 1, "map": 3},
     {"from_end": False, "op": "numa_query", "hot": False, "offset": 86016, "map": 2, "pages": 2}],
    # vmsplice of a PROT_WRITE-only anonymous page that a read fault mapped to the zero page: GUP-fast leaves
    # the special PTE to the slow path, which needs VM_READ: EFAULT (found after 6,807 host sequences, seed 913)
    [{"op": "create_vm", "type": 0},
     {"op": "create_gmem", "vm": 0, "size": 65536, "flags": 3},
     {"op": "mmap", "gmem": 0, "offset": 0, "pages": 16, "prot": 3, "flags": 1, "huge": 0},
     {"offset": 61440, "length": 28672, "from_end": False, "op": "mprotect", "hot": True, "prot": 2, "map": 1},
     {"length": 8192, "map": 1, "hot": True, "offset": 65536, "op": "host_read", "from_end": False},
     {"offset": 65536, "op": "vmsplice", "pages": 1, "map": 0}],
    # mbind(MPOL_MF_STRICT) over the zero page: no normal folio, so nothing is misplaced (found after 2,061 host
    # sequences, seed 917)
    [{"pages": 27, "op": "mmap_anon"},
     {"offset": 221184, "from_end": False, "map": 2, "op": "mlock", "hot": False, "length": 24576, "flags": 0},
     {"hot": True, "op": "mprotect", "map": 1, "prot": 1, "length": 32768, "from_end": False, "offset": 40960},
     {"length": 4096, "from_end": True, "offset": 24576, "map": 0, "hot": True, "op": "host_read"},
     {"from_end": False, "offset": 0, "mask": 0, "mode": 4, "length": 12288, "flags": 1, "hot": True, "op": "mbind",
      "map": 3}],
    # vmsplice of shmem pages made PROT_EXEC-only on a host with protection keys: execute-only, so GUP-fast's
    # pte_access_permitted() refuses them and the slow path needs VM_READ: EFAULT (host fuzz run, seed 919)
    [{"pages": 2, "op": "mmap_anon"},
     {"from_end": False, "op": "host_write", "length": 8192, "offset": 0, "hot": False, "map": 1, "byte": 1},
     {"offset": 8192, "from_end": True, "map": 1, "length": 237568, "hot": True, "prot": 4, "op": "mprotect"},
     {"map": 2, "offset": 0, "pages": 2, "op": "vmsplice"}],
    # MADV_PAGEOUT of shmem a forked child maps too: the kernel leaves the folio (mapcount 2) and its PTE
    # (host fuzz run, seed 921; the run's 11-operation sequence is known_findings/seed921-pageout-shared-shmem.json)
    [{"pages": 2, "op": "mmap_anon"},
     {"op": "host_write", "map": 1, "offset": 0, "length": 8, "byte": 7, "hot": False, "from_end": False},
     {"op": "fork"},
     {"op": "child_read", "child": 0, "map": 1, "offset": 0, "length": 1, "hot": False, "from_end": False},
     {"op": "madvise", "advice": 21, "map": 1, "offset": 0, "length": 4096, "hot": False, "from_end": False}],
    # ... and a clean cached page only the child maps is not reclaimed by the parent's MADV_PAGEOUT (found while
    # fixing seed 921): the parent's next read fault maps it around
    [{"pages": 2, "op": "mmap_anon"}, {"op": "fork"},
     {"op": "child_read", "child": 0, "map": 1, "offset": 0, "length": 1, "hot": False, "from_end": False},
     {"op": "madvise", "advice": 21, "map": 1, "offset": 0, "length": 8192, "hot": False, "from_end": False},
     {"op": "host_read", "map": 1, "offset": 4096, "length": 1, "hot": False, "from_end": False},
     {"op": "madvise", "advice": 0, "map": 1, "offset": 0, "length": 4096, "hot": False, "from_end": False}],
    # ... and MADV_REMOVE of shmem unmaps the page in every process that maps it (shmem_fallocate's
    # unmap_mapping_range), so the parent's new page is its own and MADV_PAGEOUT unmaps it
    [{"pages": 2, "op": "mmap_anon"},
     {"op": "host_write", "map": 1, "offset": 0, "length": 8, "byte": 7, "hot": False, "from_end": False},
     {"op": "fork"},
     {"op": "child_read", "child": 0, "map": 1, "offset": 0, "length": 1, "hot": False, "from_end": False},
     {"op": "madvise", "advice": 9, "map": 1, "offset": 0, "length": 4096, "hot": False, "from_end": False},
     {"op": "host_read", "map": 1, "offset": 0, "length": 1, "hot": False, "from_end": False},
     {"op": "madvise", "advice": 21, "map": 1, "offset": 0, "length": 4096, "hot": False, "from_end": False}],
    # a memslot bound past EOF (6.18's signed offset + size check wraps) and a guest write there: the kernel puts
    # folios past EOF; the model's page cache ended at EOF and raised IndexError (host fuzz run, seed 925)
    [{"op": "create_vm", "type": 0}, {"op": "create_gmem", "vm": 0, "size": 65536, "flags": 3},
     {"op": "create_vcpu", "vm": 0, "id": 0},
     {"gmem": 3, "gpa_page": 4, "uaddr_map": None, "op": "bind", "offset": 9223372036854771712, "pages": 16,
      "flags": 4, "vm": 2, "far": False, "slot": 32762},
     {"byte": 1, "offset": 4088, "gpa_page": 16, "op": "guest_write", "vcpu": 2}],
    # a guard marker under MADV_WIPEONFORK: the parent's store is SIGSEGV; the kernel client's CPU probe ran in a
    # forked child, which gets a wiped VMA without the markers, and reported EFAULT (host fuzz run, seed 929;
    # the whole sequence is known_findings/seed929-guard-under-wipeonfork.json)
    [{"pages": 2, "op": "mmap_anon"},
     {"op": "mprotect", "map": 1, "offset": -8192, "length": 8192, "prot": 3, "hot": False, "from_end": False},
     {"op": "madvise", "advice": 102, "map": 1, "offset": -8192, "length": 8192, "hot": False, "from_end": False},
     {"op": "madvise", "advice": 18, "map": 1, "offset": -8192, "length": 4096, "hot": False, "from_end": False},
     {"op": "host_fill", "map": 1, "offset": -8192, "length": 4096, "byte": 1, "hot": False, "from_end": False},
     # ... and the model's child had the parent's pages and markers there (found while fixing seed 929)
     {"op": "fork"},
     {"op": "child_write", "child": 0, "map": 1, "offset": -8192, "length": 8192, "byte": 3, "hot": False,
      "from_end": False},
     {"op": "madvise", "advice": 19, "map": 1, "offset": -8192, "length": 8192, "hot": False, "from_end": False},
     {"op": "fork"},
     {"op": "child_write", "child": 1, "map": 1, "offset": -8192, "length": 8, "byte": 3, "hot": False,
      "from_end": False}],
    [{"pages": 2, "op": "mmap_anon"},
     {"op": "mprotect", "map": 1, "offset": -8192, "length": 8192, "prot": 3, "hot": False, "from_end": False},
     {"op": "host_write", "map": 1, "offset": -4096, "length": 8, "byte": 7, "hot": False, "from_end": False},
     {"op": "madvise", "advice": 18, "map": 1, "offset": -8192, "length": 8192, "hot": False, "from_end": False},
     {"op": "fork"},
     {"op": "child_read", "child": 0, "map": 1, "offset": -4096, "length": 1, "hot": False, "from_end": False}],
    # guest reads through a classic memslot of PROT_WRITE-only memory: hva_to_pfn's GUP read needs VM_READ, unless
    # GUP-fast takes a present, writable PTE with FOLL_WRITE (not the zero page's, not one fork write-protected,
    # not for a read-only memslot). The model had let every read through (host fuzz run, seed 933; the variants
    # below were written while fixing it)
    *[_slot_read(pre, flags, reads) for pre, flags, reads in (
        ([_mprotect(8192, 8192, 2)], 1, (15,)),  # absent: EFAULT
        ([_mprotect(8192, 8192, 3), _write(8192), _mprotect(8192, 8192, 2)], 1, (15,)),  # present, writable: ok
        ([_mprotect(8192, 8192, 3), _write(8192), {"op": "fork"}, _mprotect(8192, 8192, 2)], 1, (15,)),  # COW
        ([_mprotect(8192, 8192, 3), {"op": "fork"}, _write(8192), _mprotect(8192, 8192, 2)], 1, (15,)),
        ([_mprotect(8192, 8192, 3), _read(8192), _mprotect(8192, 8192, 2)], 1, (15,)),  # the zero page
        ([_mprotect(8192, 8192, 3), _write(8192), _mprotect(8192, 8192, 2)], 2, (15,)),  # KVM_MEM_READONLY
        ([_mprotect(0, 8192, 2), _write(0)], 1, (13, 14)),  # shared anonymous memory
    )],
]


@pytest.mark.parametrize("ops", REGRESSIONS)
def test_fuzz_regressions(factories, ops) -> None:  # type: ignore[no-untyped-def]
    model, kernel = factories
    found = compare_sequence(model, kernel, load_sequence(json.dumps(ops)))
    assert found is None, f"{found}: {found.left} != {found.right}"


KNOWN_FINDINGS = sorted((Path(__file__).parent / "known_findings").glob("*.json"))


@pytest.mark.parametrize("path", KNOWN_FINDINGS, ids=[p.stem for p in KNOWN_FINDINGS])
def test_saved_fuzz_findings_replay_clean(factories, path: Path) -> None:  # type: ignore[no-untyped-def]
    """The whole sequences host fuzz runs saved (as `gmemlab fuzz --replay` reads them), once their bug is fixed."""
    model, kernel = factories
    found = compare_sequence(model, kernel, load_sequence(path.read_text()))
    assert found is None, f"{found}: {found.left} != {found.right}"


def test_small_fuzz_run_has_no_divergence(factories) -> None:  # type: ignore[no-untyped-def]
    model, kernel = factories
    report = fuzz(model, kernel, examples=40, seed_value=7)
    assert report.sequences >= 40 and report.operations > 400
    assert report.finding is None, (report.finding, report.ops)


def test_cli_both_json_reports_divergences_and_gaps() -> None:
    res = CliRunner().invoke(app, ["conformance", "--backend", "both", "--json", "-k", "test_file_size"])
    data = json.loads(res.output)
    assert res.exit_code == 0 and data["divergences"] == [] and data["gaps"] == []
    assert {c["backend"] for c in data["cases"]} == {"model", "kernel"}
    assert "rfc-v2" in data["not_compared"]  # the kernel under test is one profile; the others are not compared


def _process_resources() -> tuple[frozenset[str], frozenset[str]]:
    import os

    fds = frozenset(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}" for fd in os.listdir("/proc/self/fd")
                    if os.path.exists(f"/proc/self/fd/{fd}"))
    with open("/proc/self/maps") as maps:
        shared = frozenset(line.split()[0] for line in maps if "kvm" in line or " rw-s " in line)
    return fds, shared


def test_no_fds_or_mappings_left_after_cases_and_fuzz(factories) -> None:  # type: ignore[no-untyped-def]
    model, kernel = factories
    before = _process_resources()
    for case in CASES:
        run_case(case, kernel, "kernel", KERNEL_PROFILE)
    fuzz(model, kernel, examples=20, seed_value=11)
    after = _process_resources()
    assert after[0] - before[0] == frozenset(), "file descriptors leaked"
    assert after[1] - before[1] == frozenset(), "mappings leaked"
