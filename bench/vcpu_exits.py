#!/usr/bin/env python3
"""vCPU exit loop: gmemlab's Python vCPU driver beside an equivalent C loop, in one process and one run.

Workload: the kernel backend's native CPL3 guest (``gmemlab.kernel.guest``) with an empty request in its
mailbox: every ``KVM_RUN`` completes the previous MMIO store, runs the service loop once (three loads, a
zero-length ``rep movsb``) and exits again with ``KVM_EXIT_MMIO`` at the report GPA. So one iteration is
exactly one exit; the loops differ only in who calls ``KVM_RUN`` and checks the exit:

* ``c`` -- a C function (written to a temp dir, built with ``gcc -O2 -shared``, called through ctypes on
  the same vCPU fd and ``kvm_run`` mapping): ``ioctl(KVM_RUN)`` and the exit check, nothing else;
* ``py-raw`` -- the same loop in Python: ``libc.ioctl`` via ctypes plus reading ``exit_reason`` and
  ``mmio.phys_addr`` from the mapped ``kvm_run``;
* ``py-request`` -- the driver guest reads/writes use, :meth:`KernelVcpu.request`: mailbox stores, watchdog
  arm/disarm (two ``timer_settime``), ``KVM_RUN``, exit decoding.

Rounds alternate the order of the three so they share the host's noise (realkernel.md: +-50% run to run);
ratios are exits/s of Python over C, per round and of the medians. Target: >= 0.8.

Usage: ``python bench/vcpu_exits.py [--exits N] [--rounds N] [--json]``.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _cbuild import build_shared
from gmemlab import uapi
from gmemlab.kernel import guest, libc, open_kernel_backend
from gmemlab.kernel.watchdog import WATCHDOG_SIGNAL, Watchdog

C_SOURCE = r"""
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>
#include <sys/ioctl.h>

#define KVM_RUN 0xAE80
#define KVM_EXIT_MMIO 6

/* struct kvm_run: exit_reason at byte 8, mmio.phys_addr at byte 32 (include/uapi/linux/kvm.h) */
long exit_loop(int fd, volatile uint8_t *run, long n, uint64_t report_gpa, int tick_signal)
{
    sigset_t tick;
    struct timespec zero = {0, 0};

    sigemptyset(&tick);
    sigaddset(&tick, tick_signal);
    for (long i = 0; i < n; i++) {
        if (ioctl(fd, KVM_RUN, 0) != 0) {
            if (errno == EINTR) {  /* a watchdog tick: take it, run again */
                sigtimedwait(&tick, 0, &zero);
                i--;
                continue;
            }
            return -1 - i;
        }
        if (*(volatile uint32_t *)(run + 8) != KVM_EXIT_MMIO ||
            *(volatile uint64_t *)(run + 32) != report_gpa)
            return -1 - i;
    }
    return n;
}
"""


def build_c(tmp: Path) -> ctypes.CDLL:
    dll = build_shared(tmp, "exit_loop", C_SOURCE)
    dll.exit_loop.restype = ctypes.c_long
    dll.exit_loop.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.c_uint64, ctypes.c_int]
    return dll


def py_raw(vcpu, n: int) -> None:
    run = libc.raw_ioctl
    fd = vcpu.fd
    kvm_run = uapi.KVM_RUN
    reason = vcpu._exit_reason
    phys = vcpu._mmio_phys
    report = guest.REPORT_GPA
    i = 0
    while i < n:
        if run(fd, kvm_run, None) != 0:
            if libc.get_errno() == errno.EINTR:  # a watchdog tick: take it, run again
                Watchdog.consume()
                continue
            raise RuntimeError(f"KVM_RUN failed, errno {libc.get_errno()}")
        if reason.value != 6 or phys.value != report:
            raise RuntimeError(f"unexpected exit {reason.value}")
        i += 1


def py_request(vcpu, n: int) -> None:
    req = vcpu.request
    for _ in range(n):
        req(0x1000, 0x1000, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exits", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, open_kernel_backend() as kb:
        dll = build_c(Path(tmp))
        vm = kb.create_vm()
        vcpu = vm.create_vcpu()
        vcpu.timeout = 60.0  # watchdog ticks every 15 s: (almost) never inside the timed loops
        vcpu.request(0x1000, 0x1000, 0)
        Watchdog.consume()
        vcpu.request(0x1000, 0x1000, 0)  # prime: the vCPU now sits in the report exit, count 0

        def c_loop(n: int) -> None:
            got = dll.exit_loop(vcpu.fd, vcpu.run_address, n, guest.REPORT_GPA, WATCHDOG_SIGNAL)
            if got != n:
                raise RuntimeError(f"C loop stopped at exit {-got - 1}")

        loops = {"c": c_loop, "py-raw": lambda n: py_raw(vcpu, n), "py-request": lambda n: py_request(vcpu, n)}
        for f in loops.values():  # warm-up
            f(200)
        rates: dict[str, list[float]] = {k: [] for k in loops}
        names = list(loops)
        for r in range(args.rounds):
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                t = time.perf_counter()
                loops[name](args.exits)
                rates[name].append(args.exits / (time.perf_counter() - t))

    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "benchmark": "vcpu_exits",
        "exits_per_round": args.exits,
        "rounds": args.rounds,
        "exits_per_s": rates,
        "median_exits_per_s": med,
        "us_per_exit_median": {k: 1e6 / v for k, v in med.items()},
        "ratio_vs_c": {k: med[k] / med["c"] for k in ("py-raw", "py-request")},
        "ratio_vs_c_per_round": {
            k: [p / c for p, c in zip(rates[k], rates["c"], strict=True)] for k in ("py-raw", "py-request")
        },
        "target_ratio": 0.8,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"vCPU MMIO exit loop, {args.exits} exits x {args.rounds} rounds (median)")
        for k in loops:
            print(f"  {k:11s} {med[k]:10.0f} exits/s  {1e6 / med[k]:6.1f} us/exit", end="")
            print(f"  ratio vs C {med[k] / med['c']:.3f}" if k != "c" else "")
        ok = all(v >= 0.8 for v in result["ratio_vs_c"].values())
        print(f"  target >= 0.8: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
