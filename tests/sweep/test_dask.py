"""A real Dask LocalCluster runs a small sweep; the dataset read back with DuckDB equals the runs done one by one."""

from __future__ import annotations

import json

from gmemlab.sim.run import simulate
from gmemlab.sweep import adapter, query

from .conftest import cli

SWEEP = """
name = "dask-small"
seeds = 2
[fixed]
set.guest_mem = "1GiB"
[grid]
scenario = ["non-coco-mmap-64g", "pkvm-android-1g"]
policy = ["eager", "deferred"]
"""


def test_localcluster_sweep_matches_runs_one_by_one(sweep_file, tmp_path):
    out = tmp_path / "results"
    result = cli("sweep", str(sweep_file(SWEEP)), "--dask", "--workers", "2", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["executor"] == "Dask LocalCluster of 2 workers"
    assert summary["ran"] == 8 and summary["failed"] == 0 and summary["bytes_per_run"] > 0
    con = query.connect(out)
    names = [d[0] for d in con.execute("SELECT * FROM runs LIMIT 0").description]
    rows = [dict(zip(names, r, strict=True)) for r in con.execute("SELECT * FROM runs").fetchall()]
    assert len(rows) == 8 and len({r["worker"] for r in rows}) >= 1
    assert {(r["scenario"], r["policy"], r["seed"]) for r in rows} == {
        (s, p, seed) for s in ("non-coco-mmap-64g", "pkvm-android-1g") for p in ("eager", "deferred")
        for seed in (0, 1)}
    for row in rows:
        direct = simulate(row["scenario"], row["policy"], ["guest_mem=1GiB"], seed=row["seed"]).as_json()
        expected = adapter.flatten({k: v for k, v in direct.items() if k != "series"})
        checked = 0
        for key, value in expected.items():
            if key in ("scenario", "policy", "seed"):
                continue
            assert row[key] == value, (row["scenario"], row["policy"], row["seed"], key)
            checked += 1
        assert checked > 100  # params, metrics, counters, events: the whole result
        assert row["status"] == "ok" and row["wall_s"] > 0 and row["params.guest_mem"] == 1 << 30
    # a second run skips everything without starting a cluster
    again = cli("sweep", str(sweep_file(SWEEP)), "--dask", "--workers", "2", "--out", str(out), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 8


def test_scheduler_option_runs_on_a_running_cluster(sweep_file, tmp_path):
    """--scheduler connects to a cluster someone else started (here a LocalCluster on loopback)."""
    from distributed import LocalCluster

    path = sweep_file(SWEEP.replace("seeds = 2", "seeds = 1"))
    out = tmp_path / "results"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        result = cli("sweep", str(path), "--scheduler", cluster.scheduler_address, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["executor"] == f"Dask scheduler {cluster.scheduler_address}" and summary["ran"] == 4
    bad = cli("sweep", str(path), "--scheduler", "nonsense", "--out", str(out))
    assert bad.returncode == 2 and "expected an address such as tcp://HOST:8786" in bad.stderr
