"""Converting a whole guest_memfd private and back: ranges (the maple tree) vs one entry per page.

Target (core-model issue): create a 1 TiB guest_memfd, convert all of it private and back, O(1) ranges,
under 1 ms each. Beside it, the same conversions on a per-page store (a dict of 4 KiB indices, the
xarray's shape) at a size it can handle, with the per-page cost extrapolated to 1 TiB, so the ratio is
measured in one run on this noisy machine.

    python bench/convert.py [--json] [--repeat N] [--per-page-size 256MiB]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from gmemlab.model import ModelBackend
from gmemlab.uapi import PAGE_SHIFT

TIB = 1 << 40


def parse_size(text: str) -> int:
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * mult
    return int(text)


def time_ranges(size: int, repeat: int) -> dict[str, float]:
    create, to_private, to_shared = [], [], []
    ranges = set()
    for _ in range(repeat):
        vm = ModelBackend("rfc-v2").create_vm(0)
        t0 = time.perf_counter()
        g = vm.create_guest_memfd(size, 1)
        t1 = time.perf_counter()
        g.convert(0, size, False)
        t2 = time.perf_counter()
        ranges.add(g.inode.shareability.nr_ranges())
        g.convert(0, size, True)
        t3 = time.perf_counter()
        ranges.add(g.inode.shareability.nr_ranges())
        create.append(t1 - t0)
        to_private.append(t2 - t1)
        to_shared.append(t3 - t2)
    return {
        "create_ms": statistics.median(create) * 1e3,
        "to_private_ms": statistics.median(to_private) * 1e3,
        "to_shared_ms": statistics.median(to_shared) * 1e3,
        "ranges_held": max(ranges),
    }


def time_per_page(size: int) -> dict[str, float]:
    """An xarray-shaped store: one entry per index, every conversion walks every page."""
    npages = size >> PAGE_SHIFT
    t0 = time.perf_counter()
    state = dict.fromkeys(range(npages), 2)
    t1 = time.perf_counter()
    for i in range(npages):
        state[i] = 1
    t2 = time.perf_counter()
    for i in range(npages):
        state[i] = 2
    t3 = time.perf_counter()
    return {"create_ms": (t1 - t0) * 1e3, "to_private_ms": (t2 - t1) * 1e3, "to_shared_ms": (t3 - t2) * 1e3,
            "entries_held": npages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--size", default="1TiB", help="guest_memfd size for the range store (default 1TiB)")
    ap.add_argument("--per-page-size", default="256MiB", help="size the per-page store is measured at")
    args = ap.parse_args(argv)
    try:
        size, pp_size = parse_size(args.size), parse_size(args.per_page_size)
    except ValueError:
        print(f"bench/convert.py: error: sizes look like 1TiB, 256MiB or a byte count, got "
              f"{args.size!r} / {args.per_page_size!r}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("bench/convert.py: error: --repeat must be >= 1", file=sys.stderr)
        return 2
    ranges = time_ranges(size, args.repeat)
    small = time_ranges(pp_size, args.repeat)
    per_page = time_per_page(pp_size)
    scale = size / pp_size
    extrapolated = {k: v * scale for k, v in per_page.items() if k.endswith("_ms")}
    result = {
        "size": size,
        "ranges": ranges,
        "ranges_at_per_page_size": small,
        "per_page_at": {"size": pp_size, **per_page},
        "per_page_extrapolated_to_size": extrapolated,
        "speedup_to_private": extrapolated["to_private_ms"] / max(ranges["to_private_ms"], 1e-9),
        "size_independence": ranges["to_private_ms"] / max(small["to_private_ms"], 1e-9),
        "target_met": ranges["to_private_ms"] < 1 and ranges["to_shared_ms"] < 1 and ranges["ranges_held"] == 1,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"convert a {size >> 30} GiB guest_memfd private and back (median of {args.repeat})")
    print(f"  range store   : create {ranges['create_ms']:.3f} ms, to private {ranges['to_private_ms']:.3f} ms, "
          f"to shared {ranges['to_shared_ms']:.3f} ms, ranges held {ranges['ranges_held']}")
    print(f"  same at {pp_size >> 20} MiB: to private {small['to_private_ms']:.3f} ms "
          f"(1 TiB / {pp_size >> 20} MiB time ratio {result['size_independence']:.2f}x)")
    print(f"  per-page store at {pp_size >> 20} MiB: to private {per_page['to_private_ms']:.1f} ms, "
          f"{per_page['entries_held']} entries; extrapolated to {size >> 30} GiB: "
          f"{extrapolated['to_private_ms'] / 1e3:.1f} s")
    print(f"  range vs per-page at {size >> 30} GiB: {result['speedup_to_private']:,.0f}x faster")
    print(f"  target (< 1 ms each, O(1) ranges): {'met' if result['target_met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
