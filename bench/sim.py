"""Simulator benchmarks (simulator issue targets; workloads.md §5.2, §5.8, §6).

* ``64g``: snp-lazy-accept-64g with all memory accepted (16,384 chunks and their faults): <= 1 s.
* ``1t``: the same guest at 1 TiB, all accepted (262,144 chunks): <= 15 s and <= 300 MiB peak RSS.
* ``16g-equal`` vs ``16t-equal``: equal event counts (16 GiB accepted, a 1 GiB swiotlb) in a 16 GiB and a
  16 TiB guest: within 1.2x in wall time and in peak RSS under every policy (issue 10 target), because every
  step is a range operation.
* ``attr-init-1t``: SET_ATTR(all, private) over 1 TiB: the *modelled* xarray (row 12, one entry per page)
  versus maple-tree (row 13, one range) cost, and the simulator's own wall time for both, which does not
  walk pages.

Each case runs in a fresh interpreter (so peak RSS is its own), for each policy, side by side.

    python bench/sim.py [--json] [--policy eager --policy deferred] [--case 64g ...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES: dict[str, tuple[str, list[str]]] = {
    "64g": ("snp-lazy-accept-64g", ["accept.accepted_eventually=64GiB"]),
    "1t": ("snp-lazy-accept-64g", ["guest_mem=1TiB", "accept.accepted_eventually=1TiB"]),
    "16g-equal": ("snp-lazy-accept-64g", ["guest_mem=16GiB", "accept.accepted_eventually=16GiB",
                                          "shared_regions.swiotlb.size=1GiB"]),
    "16t-equal": ("snp-lazy-accept-64g", ["guest_mem=16TiB", "accept.accepted_eventually=16GiB",
                                          "shared_regions.swiotlb.size=1GiB"]),
    "attr-xarray": ("attr-init-1t", []),
    "attr-maple": ("attr-init-1t", ["attr_store=maple"]),
}
TARGETS = {"64g": ("wall_s", 1.0), "1t": ("wall_s", 15.0)}
RSS_TARGET_MIB = {"1t": 300}
EQUAL_RATIO_MAX = 1.2  # 16 TiB / 16 GiB, wall and peak RSS, equal events


def one(case: str, policy: str) -> dict[str, object]:
    """Run one case here and report it (called in a child interpreter)."""
    from gmemlab.sim.run import simulate
    from gmemlab.workload.scenario import load_scenario

    scenario, sets = CASES[case]
    t0, c0 = time.perf_counter(), time.process_time()
    result = simulate(scenario, policy, sets)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sc = load_scenario(scenario, sets)
    return {
        "case": case, "policy": policy, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
        "events": sum(result.events.values()), "accept_chunks": sc.accept_plan().chunks_total,
        "guest_mem": sc.guest_mem,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "modelled_attr_store_s": result.times.cpu_by_category["attr_store"].seconds,
        "modelled_cpu_s": round(result.times.cpu.seconds, 3),
        "splits_1g": result.metrics["splits"]["1G"],
    }


def run_child(case: str, policy: str, repeat: int) -> dict[str, object]:
    """Best wall time of ``repeat`` fresh runs (one run when a case takes more than 2 s: noise is small)."""
    best: dict[str, object] | None = None
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--child", case, policy], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout)
        if best is None or float(r["wall_s"]) < float(best["wall_s"]):
            best = r
        if float(r["wall_s"]) > 2:
            break
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--policy", action="append", default=[])
    parser.add_argument("--case", action="append", default=[], choices=list(CASES))
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best wall time is kept")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(*args.child)))
        return
    policies = args.policy or ["eager", "deferred"]
    rows = [run_child(case, policy, args.repeat) for case in args.case or list(CASES) for policy in policies]
    by = {(r["case"], r["policy"]): r for r in rows}
    derived = []
    for policy in policies:
        a, b = by.get(("16g-equal", policy)), by.get(("16t-equal", policy))
        if a and b:
            for what, key in (("wall", "wall_s"), ("CPU", "cpu_s"), ("peak RSS", "peak_rss_mib")):
                ratio = round(float(b[key]) / float(a[key]), 2)
                derived.append({"what": f"16 TiB / 16 GiB {what}, equal events ({policy})", "value": ratio,
                                "detail": f"{b[key]} vs {a[key]}; {a['events']:,} vs {b['events']:,} events",
                                "ok": ratio <= EQUAL_RATIO_MAX})
        x, m = by.get(("attr-xarray", policy)), by.get(("attr-maple", policy))
        if x and m:
            xs, ms = float(x["modelled_attr_store_s"]), float(m["modelled_attr_store_s"])
            derived.append({"what": f"attr-init-1t modelled xarray / maple ({policy})", "value": round(xs / ms),
                            "detail": f"{xs:.3f} s vs {ms * 1e6:.0f} µs modelled; "
                                      f"wall {x['wall_s']} s vs {m['wall_s']} s"})
    for r in rows:
        target = TARGETS.get(str(r["case"]))
        r["target"] = f"<= {target[1]:g} s" if target else ""
        r["ok"] = bool(target is None or float(r["wall_s"]) <= target[1])
        if r["case"] in RSS_TARGET_MIB:
            r["target"] += f", <= {RSS_TARGET_MIB[str(r['case'])]} MiB"
            r["ok"] = r["ok"] and float(r["peak_rss_mib"]) <= RSS_TARGET_MIB[str(r["case"])]
    if args.json:
        print(json.dumps({"runs": rows, "derived": derived}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from gmemlab.workload.units import format_size

    table = Table(title="gmemlab simulator benchmarks (fresh interpreter per run)")
    for col in ("case", "policy", "guest", "chunks", "events", "wall s", "CPU s", "peak RSS MiB", "target", "ok"):
        table.add_column(col, justify="left" if col in ("case", "policy", "target") else "right")
    for r in rows:
        table.add_row(str(r["case"]), str(r["policy"]), format_size(int(r["guest_mem"])),
                      f"{r['accept_chunks']:,}", f"{r['events']:,}", f"{r['wall_s']}", f"{r['cpu_s']}",
                      f"{r['peak_rss_mib']}",
                      str(r["target"]), "yes" if r["ok"] else "NO")
    console = Console(width=160)
    console.print(table)
    side = Table(title=f"Ratios (target: equal-event runs within {EQUAL_RATIO_MAX}x)")
    for col in ("what", "value", "detail", "ok"):
        side.add_column(col)
    for d in derived:
        side.add_row(str(d["what"]), f"{d['value']}", str(d["detail"]),
                     "" if "ok" not in d else ("yes" if d["ok"] else "NO"))
    console.print(side)


if __name__ == "__main__":
    main()
