"""The runner and the dataset: failing runs are rows, batches are sized, files are atomic, reruns skip."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from gmemlab.errors import UsageError
from gmemlab.sweep import adapter, worker
from gmemlab.sweep.adapter import ScenarioRef
from gmemlab.sweep.dataset import Dataset, to_table
from gmemlab.sweep.executors import LocalExecutor, SerialExecutor
from gmemlab.sweep.runner import Batcher, merge, run_tasks
from gmemlab.sweep.tasks import make_task

FAST = ScenarioRef("non-coco-mmap-64g")
ONE_GIB = (("guest_mem", "1GiB"),)


def fast_tasks(seeds: range, sweep: str = "t") -> list:
    return [make_task(FAST, "deferred", "", seed, ONE_GIB, sweep=sweep) for seed in seeds]


def test_failing_run_is_a_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = adapter.run_one

    def flaky(ref, policy, profile, seed, *args, **kwargs):
        if seed == 1:
            raise MemoryError("simulated failure for seed 1")
        return real(ref, policy, profile, seed, *args, **kwargs)

    monkeypatch.setattr(worker.adapter, "run_one", flaky)
    with Dataset(tmp_path) as ds:
        outcome = run_tasks(fast_tasks(range(3)), SerialExecutor(), dataset=ds, collect=True)
    assert outcome.stats.done == 3 and outcome.stats.failed == 1 and not outcome.interrupted
    rows = {r["seed"]: r for r in outcome.rows}
    assert rows[1]["status"] == "error" and rows[1]["error"] == "MemoryError: simulated failure for seed 1"
    assert "flaky" in rows[1]["error_trace"]
    assert rows[0]["status"] == rows[2]["status"] == "ok" and rows[0]["metrics.guest_faults"] >= 0
    # the failed row keeps its inputs; the dataset holds all three
    assert rows[1]["params.guest_mem"] == 1 << 30
    con = duckdb.connect()
    files = [str(p) for p in ds.parts()]
    got = con.execute("SELECT seed, status, error FROM read_parquet(?, union_by_name = true) ORDER BY seed",
                      [files]).fetchall()
    assert got == [(0, "ok", None), (1, "error", "MemoryError: simulated failure for seed 1"), (2, "ok", None)]
    # a rerun skips everything (failed runs too) unless asked to retry them
    monkeypatch.setattr(worker.adapter, "run_one", real)
    with Dataset(tmp_path) as ds:
        again = run_tasks(fast_tasks(range(3)), SerialExecutor(), dataset=ds)
        assert again.stats.skipped == 3 and again.stats.done == 0
        retry = run_tasks(fast_tasks(range(3)), SerialExecutor(), dataset=ds, retry_failed=True, collect=True)
    assert retry.stats.skipped == 2 and [r["seed"] for r in retry.rows] == [1] and retry.rows[0]["status"] == "ok"


def test_duplicate_inputs_run_once():
    tasks = fast_tasks(range(2)) + fast_tasks(range(2))
    outcome = run_tasks(tasks, SerialExecutor(), collect=True)
    assert outcome.stats.duplicates == 2 and len(outcome.rows) == 2


def crash_on_seed_2(jobs):
    """A batch function whose worker dies (os._exit) on seed 2: the runner retries alone, then records it."""
    if any(job.seed == 2 for job in jobs):
        os._exit(3)
    return worker.run_batch(jobs)


def test_dead_worker_retries_batch_one_by_one_then_records_the_culprit():
    outcome = run_tasks(fast_tasks(range(4)), LocalExecutor(1, fn=crash_on_seed_2), collect=True, batch_seconds=5)
    rows = {r["seed"]: r for r in outcome.rows}
    assert sorted(rows) == [0, 1, 2, 3]
    assert rows[2]["status"] == "error" and rows[2]["error"].startswith("WorkerLost: worker process died")
    assert all(rows[s]["status"] == "ok" for s in (0, 1, 3))


def test_batcher_sizes_by_observed_time_and_shrinks_at_the_end():
    jobs = [t.job for t in fast_tasks(range(40))]
    b = Batcher(jobs, target_s=0.5)
    assert len(b.next(workers=2)) == 1  # unknown cost: alone
    b.observe(jobs[0], 0.05)  # same config: ~10 per 0.5 s
    assert len(b.next(workers=2)) == 9  # capped at len(queue) // 4 = 9 as well
    sizes = []
    while b.queue:
        sizes.append(len(b.next(workers=2)))
    assert sizes[0] == 7 and sizes[-1] == 1 and sum(sizes) == 30


def test_merge_keeps_disagreeing_result_beside_the_input():
    row = merge({"policy": "eager", "seed": 1}, {"policy": "eager+merge-never", "seed": 1, "x": 2})
    assert row == {"policy": "eager", "seed": 1, "result.policy": "eager+merge-never", "x": 2}


def test_columns_typed_by_values_and_core_columns_always_present():
    table = to_table([{"a": 1, "b": 1.5, "c": True, "d": "x", "e": None, "f": 1},
                      {"a": 2, "b": 2, "c": False, "d": 3, "e": None, "f": 2.5}])
    types = {f.name: str(f.type) for f in table.schema}
    assert types["a"] == "int64" and types["b"] == "double" and types["c"] == "bool" and types["d"] == "string"
    assert types["f"] == "double" and types["e"] == "null"
    assert types["error"] == "string" and types["finished_at"].startswith("timestamp")
    assert table.column("d").to_pylist() == ["x", "3"]


def test_writes_are_atomic_and_stale_temporaries_removed(tmp_path):
    (tmp_path / ".tmp-part-dead.parquet").write_bytes(b"half a file")
    with Dataset(tmp_path) as ds:
        assert not list(tmp_path.glob(".tmp-*"))
        path = ds.write([{"input_hash": "h1", "status": "ok", "x": 1}])
        ds.write([{"input_hash": "h2", "status": "ok", "y": "a"}])
        assert path is not None and path.name.startswith("part-") and not list(tmp_path.glob(".tmp-*"))
        assert ds.present() == {"h1", "h2"}
        merged = ds.consolidate(ds.batch_files())
    assert merged is not None and ds.parts() == [merged]
    table = pq.read_table(merged)
    assert sorted(table.column("input_hash").to_pylist()) == ["h1", "h2"]
    assert {"x", "y"} <= set(table.column_names)


def test_one_writer_per_folder(tmp_path):
    with Dataset(tmp_path), pytest.raises(UsageError, match="another sweep is writing"):
        Dataset(tmp_path).open()


def test_flatten_joins_keys_and_keeps_rows_finite():
    flat = adapter.flatten({"a": {"b": {"c": 1}}, "l": [1, 2], "n": float("nan"), "big": 1 << 70, "s": "x"})
    assert flat == {"a.b.c": 1, "l": "[1, 2]", "n": None, "big": str(1 << 70), "s": "x"}


def test_run_one_result_is_the_simulators_json_flattened():
    from gmemlab.sim.run import simulate

    cols = adapter.run_one(FAST, "deferred", "", 0, ONE_GIB)
    direct = simulate("non-coco-mmap-64g", "deferred", ["guest_mem=1GiB"], seed=0).as_json()
    assert cols["metrics.splits.1G"] == direct["metrics"]["splits"]["1G"]
    assert cols["time.cpu.s"] == direct["time"]["cpu"]["s"]
    assert cols["time.boot_critical_path.assumed_share"] == direct["time"]["boot_critical_path"]["assumed_share"]
    assert not any(k.startswith("series") for k in cols)


def test_sweep_into_unwritable_folder_is_a_usage_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write results here"):
        Dataset(blocker / "sub").open()


def test_cost_changes_apply_like_the_costs_option(tmp_path):
    """A sweep's cost changes go through the simulator's --costs loader: same rows as `gmemlab run --costs`."""
    from gmemlab.sim.costs import load_cost_table

    path = tmp_path / "costs.toml"
    path.write_text('[rows."24"]\nweight = 1.0\n[rows."6"]\nper_vcpu = 2.0\n')
    changes = adapter.cost_changes_from_file(path)
    assert changes == (("24", "weight", 1.0), ("6", "per_vcpu", 2.0))
    assert adapter.cost_table(changes, "costs.toml").rows == load_cost_table(path).rows
    plain = make_task(FAST, "deferred", "", 0, ONE_GIB)
    changed = make_task(FAST, "deferred", "", 0, ONE_GIB, costs=changes)
    assert plain.input_hash != changed.input_hash
    assert plain.inputs["cost_table.hash"] != changed.inputs["cost_table.hash"]
