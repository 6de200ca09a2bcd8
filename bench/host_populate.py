#!/usr/bin/env python3
"""Host population of a 1 GiB guest_memfd: gmemlab's kernel backend from Python beside C, in one run.

Each sample creates a fresh ``MMAP|INIT_SHARED`` guest_memfd on one VM, maps it ``MAP_SHARED`` and
populates every page, then (untimed) unmaps and closes it, which frees the memory. Methods:

* ``populate-write`` -- ``madvise(MADV_POPULATE_WRITE)`` over the whole mapping: the kernel's own fault
  loop allocates, zeroes and maps every page (realkernel.md #157, #320). From Python this is
  ``KernelGuestMemfd.mmap`` + ``KernelHostMapping.madvise``; the C side (a function written to a temp
  dir, built with ``gcc -O2 -shared``, called through ctypes in the same process) issues
  ``KVM_CREATE_GUEST_MEMFD``, ``mmap`` and ``madvise`` directly.
* ``fallocate`` -- ``fallocate(KEEP_SIZE)`` of the whole file (allocation without mapping, #318).
* ``fill`` (informative, no target) -- writing every byte: C ``memset`` on the mapping (faults every page
  with the CPU, #321) against ``KernelHostMapping.fill``, the backend's SIGBUS-safe path
  (``process_vm_writev`` on our own pid, one iovec per page; GUP faults the pages).

The timed region is the same on both sides: create + mmap + populate (+ munmap/close untimed). Rounds
alternate which side goes first so both share the host's noise (+-50% run to run on this nested host);
ratios are Python time over C time, per round and of the medians. Target: <= 1.1.

Usage: ``python bench/host_populate.py [--size-mib N] [--rounds N] [--json]``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _cbuild import build_shared
from gmemlab import uapi
from gmemlab.kernel import libc, open_kernel_backend

C_SOURCE = r"""
#define _GNU_SOURCE  /* fallocate */
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#define KVM_CREATE_GUEST_MEMFD 0xC040AED4UL
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct kvm_create_guest_memfd { uint64_t size, flags, reserved[6]; };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* method 0: create + mmap + MADV_POPULATE_WRITE; method 1: create + fallocate(KEEP_SIZE);
   method 2: create + mmap + memset.
   Returns the timed seconds, or a negative value on failure. */
double populate(int vm_fd, uint64_t size, int method)
{
    struct kvm_create_guest_memfd arg;
    double t0 = now(), t;
    int fd;

    memset(&arg, 0, sizeof(arg));
    arg.size = size;
    arg.flags = 3;  /* MMAP | INIT_SHARED */
    fd = ioctl(vm_fd, KVM_CREATE_GUEST_MEMFD, &arg);
    if (fd < 0)
        return -1;
    if (method == 0) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED || madvise(p, size, MADV_POPULATE_WRITE)) {
            close(fd);
            return -2;
        }
        t = now() - t0;
        munmap(p, size);
    } else if (method == 2) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            close(fd);
            return -4;
        }
        memset(p, 0x5a, size);
        t = now() - t0;
        munmap(p, size);
    } else {
        if (fallocate(fd, 1 /* FALLOC_FL_KEEP_SIZE */, 0, size)) {
            close(fd);
            return -3;
        }
        t = now() - t0;
    }
    close(fd);
    return t;
}
"""

METHODS = ("populate-write", "fallocate", "fill")


def build_c(tmp: Path) -> ctypes.CDLL:
    dll = build_shared(tmp, "populate", C_SOURCE)
    dll.populate.restype = ctypes.c_double
    dll.populate.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_int]
    return dll


def py_populate(vm, size: int, method: str) -> float:
    t0 = time.perf_counter()
    g = vm.create_guest_memfd(size, 3)
    if method == "populate-write":
        m = g.mmap(size)
        m.madvise(0, size, libc.MADV_POPULATE_WRITE)
        t = time.perf_counter() - t0
        m.munmap()
    elif method == "fill":
        m = g.mmap(size)
        m.fill(0, size, 0x5A)
        t = time.perf_counter() - t0
        m.munmap()
    else:
        g.fallocate(uapi.FALLOC_FL_KEEP_SIZE, 0, size)
        t = time.perf_counter() - t0
    g.close()
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to pause before each timed run, so free-page reporting on a nested host "
                         "has handed back what the previous run freed and both sides start alike")
    args = ap.parse_args()
    size = args.size_mib << 20

    times: dict[str, dict[str, list[float]]] = {m: {"c": [], "py": []} for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp, open_kernel_backend() as kb:
        dll = build_c(Path(tmp))
        vm = kb.create_vm()

        def c_populate(method: str) -> float:
            t = dll.populate(vm.fd, size, METHODS.index(method))
            if t < 0:
                raise RuntimeError(f"C populate failed ({t})")
            return t

        for method in METHODS:  # warm-up at 1/8 size
            dll.populate(vm.fd, size // 8, METHODS.index(method))
            py_populate(vm, size // 8, method)
        for r in range(args.rounds):
            for method in METHODS:
                order = ("c", "py") if r % 2 == 0 else ("py", "c")
                for side in order:
                    if args.settle:
                        time.sleep(args.settle)
                    t = c_populate(method) if side == "c" else py_populate(vm, size, method)
                    times[method][side].append(t)

    result: dict = {"benchmark": "host_populate", "size_bytes": size, "rounds": args.rounds, "methods": {}}
    for method in METHODS:
        c, py = times[method]["c"], times[method]["py"]
        mc, mp = statistics.median(c), statistics.median(py)
        result["methods"][method] = {
            "seconds": {"c": c, "py": py},
            "median_s": {"c": mc, "py": mp},
            "pages_per_s_median": {"c": size / 4096 / mc, "py": size / 4096 / mp},
            "ratio_of_medians": mp / mc,
            "ratio_per_round": [p / q for p, q in zip(py, c, strict=True)],
            # Paired: each round times both sides back to back (alternating who goes first), so the median
            # of the per-round ratios cancels the slow phases of this nested host better than medians do.
            "ratio_py_over_c": statistics.median(p / q for p, q in zip(py, c, strict=True)),
        }
    result["target_ratio"] = 1.1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"host population of a {args.size_mib} MiB guest_memfd, {args.rounds} rounds (median)")
        for method, r in result["methods"].items():
            m = r["median_s"]
            print(
                f"  {method:15s} C {m['c'] * 1e3:8.1f} ms   Python {m['py'] * 1e3:8.1f} ms   "
                f"paired ratio {r['ratio_py_over_c']:.3f} (of medians {r['ratio_of_medians']:.3f})   "
                f"({r['pages_per_s_median']['py']:.0f} pages/s from Python)"
            )
        ok = result["methods"]["populate-write"]["ratio_py_over_c"] <= 1.1
        print(f"  target <= 1.1 (populate-write): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
