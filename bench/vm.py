"""Kernels under QEMU: boot time, and conformance cases per second inside the VM next to this machine's kernel.

    python bench/vm.py --kernel IMAGE [--boots 3]

Boot time is measured from starting QEMU to the guest starting the command (``VmResult.boot_seconds``) and
to QEMU's exit after ``true``. Cases per second: the linux-6.18 conformance cases on the kernel backend
only (the model is not timed), run by this same script inside the VM and here, side by side; the ratio is
what nesting under TCG costs. Every number is measured in this run; this machine is noisy, read the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

INNER_FILE = "bench-vm.json"


def time_kernel_cases() -> dict[str, float]:
    from gmemlab.cli.conformance import backends_for
    from gmemlab.conformance import run_suite, summary

    start = time.perf_counter()
    results, _ = run_suite(["linux-6.18"], backends_for("kernel"))
    seconds = time.perf_counter() - start
    counts = summary(results)
    return {"cases": len(results), "passed": counts["pass"], "skipped": counts["skip"], "failed": counts["fail"],
            "seconds": seconds, "cases_per_s": len(results) / seconds, "release": os.uname().release}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", help="kernel image to boot (default: $GMEMLAB_KERNEL or Debian's, cached)")
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        with open(os.path.join(os.environ["GMEMLAB_VM_OUT"], INNER_FILE), "w") as f:
            json.dump(time_kernel_cases(), f)
        return 0
    from gmemlab.qemu import VmSpec, debian, run_in_vm

    kernel = args.kernel or os.environ.get("GMEMLAB_KERNEL") or debian.cached_kernel()
    if not kernel:
        print("bench/vm.py: skipped: no kernel image (--kernel, GMEMLAB_KERNEL, or make test's Debian kernel)")
        return 0
    boots, totals = [], []
    for _ in range(args.boots):
        r = run_in_vm(VmSpec(kernel, timeout=300), ["true"])
        boots.append(r.boot_seconds or float("nan"))
        totals.append(r.seconds)
    r = run_in_vm(VmSpec(kernel, timeout=1800, keep=True),
                  [sys.executable, os.path.abspath(__file__), "--inner"], sink=sys.stderr.buffer.write)
    assert r.run_dir is not None
    with open(os.path.join(r.run_dir, INNER_FILE)) as f:
        inside = json.load(f)
    shutil.rmtree(r.run_dir, ignore_errors=True)
    here = time_kernel_cases()
    print(f"kernel image: {kernel} ({r.release}, {r.accel})")
    print(f"boot to command: median {statistics.median(boots):.2f} s of {args.boots} "
          f"({', '.join(f'{b:.2f}' for b in boots)}); QEMU start to exit after `true`: median "
          f"{statistics.median(totals):.2f} s")
    print(f"{'':24}{'cases':>7}{'pass':>6}{'skip':>6}{'fail':>6}{'seconds':>9}{'cases/s':>9}")
    for label, d in ((f"in VM {inside['release']}", inside), (f"here {here['release']}", here)):
        print(f"{label[:24]:24}{d['cases']:>7}{d['passed']:>6}{d['skipped']:>6}{d['failed']:>6}"
              f"{d['seconds']:>9.2f}{d['cases_per_s']:>9.2f}")
    print(f"ratio here/VM: {here['cases_per_s'] / inside['cases_per_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
