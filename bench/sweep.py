"""Sweep benchmark (issue 12 targets), side by side in one run: the same >= 1,000 simulator runs on

* ``local-1`` / ``local-2``: 1 and 2 local worker processes, batches sized by the runner (the default);
* ``dask-2``: a Dask LocalCluster of 2 single-threaded workers, same batching;
* ``local-1-nobatch`` / ``dask-1-nobatch``: one run per task on a subset, to show what batching saves.

Targets: throughput of ``local-2`` >= 1.7x ``local-1`` (a 2-core machine); scheduler and I/O overhead per run
< 5% of the median run's wall time, where overhead = (wall x workers - sum of the runs' own wall times) / runs
(everything that is not simulating: dispatch, pickling, merging rows, writing Parquet, idle workers at the
end). Executor start-up (process pool, LocalCluster) is timed apart. Dataset size per run is measured before
and after the end-of-sweep merge of the batch files. The machine is shared: the load average is printed before
and after, and each run's CPU time beside its wall time (``run_cpu_per_wall`` well below 1 means the workers
waited for a CPU that other processes held); compare the ratios, not the absolute numbers.

    python bench/sweep.py [--seeds 126] [--subset 250] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gmemlab.sweep.dataset import Dataset
from gmemlab.sweep.executors import DaskExecutor, Executor, LocalExecutor
from gmemlab.sweep.runner import run_tasks
from gmemlab.sweep.spec import parse_sweep
from gmemlab.sweep.tasks import Task, expand

# 4 guests x 2 policies at 1 GiB: runs of ~10 ms to ~0.1 s on this machine (a realistic mix of short runs,
# where scheduling overhead matters most).
SWEEP = """
name = "bench"
seeds = {seeds}
[fixed]
set.guest_mem = "1GiB"
[grid]
scenario = ["non-coco-mmap-64g", "pkvm-android-1g", "snp-lazy-accept-64g", "tdx-boot-64g"]
policy = ["eager", "deferred"]
"""


def measure(name: str, tasks: list[Task], executor: Executor, workers: int, batch_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gmemlab-bench-") as tmp:
        t0 = time.perf_counter()
        executor.start()
        startup = time.perf_counter() - t0
        with Dataset(Path(tmp)) as ds:
            t0 = time.perf_counter()
            outcome = run_tasks(tasks, executor, dataset=ds, collect=True, batch_seconds=batch_seconds,
                                started=True)
            wall = time.perf_counter() - t0
            parts_bytes = ds.size_bytes()
            files = len(ds.parts())
            t0 = time.perf_counter()
            ds.consolidate(ds.batch_files())
            merge_s = time.perf_counter() - t0
            merged_bytes = ds.size_bytes()
    walls = [r["wall_s"] for r in outcome.rows if r["status"] == "ok"]
    cpus = [r["cpu_s"] for r in outcome.rows if r["status"] == "ok"]
    n = len(outcome.rows)
    stats = outcome.stats
    median = statistics.median(walls)
    overhead = (wall * workers - sum(walls)) / n
    return {
        "config": name, "workers": workers, "runs": n, "failed": stats.failed, "startup_s": round(startup, 3),
        "wall_s": round(wall, 3), "runs_per_s": round(n / wall, 2), "batches": stats.batches, "files": files,
        "median_run_s": round(median, 5), "mean_run_s": round(statistics.fmean(walls), 5),
        "median_run_cpu_s": round(statistics.median(cpus), 5), "run_cpu_per_wall": round(sum(cpus) / sum(walls), 3),
        "overhead_per_run_ms": round(overhead * 1e3, 3), "overhead_pct_of_median": round(100 * overhead / median, 2),
        "write_s": round(stats.write_seconds, 3), "write_pct_of_wall": round(100 * stats.write_seconds / wall, 2),
        "merge_s": round(merge_s, 3), "bytes_per_run_parts": round(parts_bytes / n),
        "bytes_per_run_merged": round(merged_bytes / n),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=126, help="seeds per (scenario, policy): 8 x 126 = 1,008 runs")
    ap.add_argument("--subset", type=int, default=248, help="runs for the one-run-per-task configurations")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tasks = expand(parse_sweep(SWEEP.format(seeds=args.seeds), "bench", "bench", None))
    # the subset keeps the mix: every (scenario, policy) with its first seeds
    per = max(1, args.subset // 8)
    subset = [t for t in tasks if t.inputs["seed"] < per]
    load_before = os.getloadavg()
    results = [
        measure("local-1", tasks, LocalExecutor(1), 1, 0.5),
        measure("local-2", tasks, LocalExecutor(2), 2, 0.5),
        measure("dask-2", tasks, DaskExecutor(workers=2), 2, 0.5),
        measure("local-1-nobatch", subset, LocalExecutor(1), 1, 0.0),
        measure("dask-1-nobatch", subset, DaskExecutor(workers=1), 1, 0.0),
    ]
    load_after = os.getloadavg()
    by = {r["config"]: r for r in results}
    ratios = {
        "local-2 / local-1 throughput": round(by["local-2"]["runs_per_s"] / by["local-1"]["runs_per_s"], 3),
        "dask-2 / local-1 throughput": round(by["dask-2"]["runs_per_s"] / by["local-1"]["runs_per_s"], 3),
        "dask-2 / local-2 throughput": round(by["dask-2"]["runs_per_s"] / by["local-2"]["runs_per_s"], 3),
    }
    report = {"load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
              "cpus": os.cpu_count(), "results": results, "ratios": ratios,
              "targets": {"local-2 / local-1 >= 1.7": ratios["local-2 / local-1 throughput"] >= 1.7,
                          "overhead < 5% of median run (local-1, batched)":
                              by["local-1"]["overhead_pct_of_median"] < 5.0}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"load average before {report['load_before']}, after {report['load_after']} ({os.cpu_count()} CPUs)")
    cols = ["config", "runs", "startup_s", "wall_s", "runs_per_s", "batches", "files", "median_run_s",
            "median_run_cpu_s", "run_cpu_per_wall",
            "overhead_per_run_ms", "overhead_pct_of_median", "write_pct_of_wall", "bytes_per_run_parts",
            "bytes_per_run_merged"]
    widths = [max(len(c), *(len(str(r[c])) for r in results)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for r in results:
        print("  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths, strict=True)))
    for name, value in ratios.items():
        print(f"{name}: {value}x")
    for name, ok in report["targets"].items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
