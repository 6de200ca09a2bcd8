"""``gmemlab results``: SQL as table/JSON/CSV, column lookup, plots (mean and 95% interval over seeds)."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.errors import UsageError
from gmemlab.sweep import query
from gmemlab.sweep.dataset import Dataset
from gmemlab.sweep.executors import SerialExecutor
from gmemlab.sweep.plot import collect, interval, t975
from gmemlab.sweep.runner import run_tasks
from gmemlab.sweep.spec import parse_sweep
from gmemlab.sweep.tasks import expand

runner = CliRunner()

SWEEP = """
seeds = 3
[fixed]
scenario = "non-coco-mmap-64g"
[grid]
set.guest_mem = ["1GiB", "2GiB"]
policy = ["deferred", "deferred+direct"]
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    tasks = expand(parse_sweep(SWEEP, "small.toml", "small", None))
    with Dataset(out) as ds:
        outcome = run_tasks(tasks, SerialExecutor(), dataset=ds, collect=True)
    assert outcome.stats.done == 12 and outcome.stats.failed == 0
    return out, outcome.rows


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_sql_table_json_csv(results):
    out, rows = results
    q = 'SELECT policy, "params.guest_mem" AS mem, count(*) AS n FROM runs GROUP BY ALL ORDER BY ALL'
    res = invoke("results", str(out), "--sql", q)
    assert res.exit_code == 0, res.output
    assert "deferred+direct" in res.output and "1073741824" in res.output and "4 rows" in res.output
    res = invoke("results", str(out), "--sql", q, "--json")
    assert json.loads(res.output)[0] == {"policy": "deferred", "mem": 1 << 30, "n": 3}
    res = invoke("results", str(out), "--sql", "SELECT seed, finished_at FROM runs ORDER BY seed LIMIT 1", "--csv")
    table = list(csv.reader(io.StringIO(res.output)))
    assert table[0] == ["seed", "finished_at"] and table[1][0] == "0"


def test_sql_errors_are_one_line_usage_errors(results, tmp_path):
    out, _ = results
    with pytest.raises(UsageError, match=r"^--sql: .*no_such_column"):
        query.sql(out, "SELECT no_such_column FROM runs")
    with pytest.raises(UsageError, match="no such results folder"):
        query.sql(tmp_path / "nowhere", "SELECT 1")
    with pytest.raises(UsageError, match="no results here"):
        query.sql(tmp_path, "SELECT 1")
    res = invoke("results", str(out), "--csv")
    assert res.exit_code != 0


def test_overview(results):
    out, _ = results
    info = query.overview(out)
    assert info["runs"] == 12 and info["sweeps"][0]["ok"] == 12 and info["bytes_per_run"] > 0
    assert info["column_groups"]["params"] > 50 and info["column_groups"]["metrics"] > 10


def test_columns_by_unique_tail():
    known = ["params.guest_mem", "set.guest_mem", "metrics.splits.1G", "metrics.merges.1G", "counters.x.2M",
             "metrics.splits.2M"]
    assert query.resolve("guest_mem", known, "--x") == "params.guest_mem"
    assert query.resolve("splits_1G", known, "--y") == "metrics.splits.1G"
    assert query.resolve("2M", known, "--y") == "metrics.splits.2M"  # ties prefer params., then metrics.
    with pytest.raises(UsageError, match="matches 2 columns"):
        query.resolve("1G", known, "--y")
    with pytest.raises(UsageError, match="did you mean"):
        query.resolve("guest_memm", known, "--x")


def test_t_quantiles_and_interval():
    assert t975(1) == 12.706 and t975(30) == 2.042
    assert abs(t975(40) - 2.021) < 1e-3 and abs(t975(120) - 1.980) < 1e-3
    mean, low, high = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(high - mean, 4.303 * 1.0 / math.sqrt(3))
    assert interval([5.0]) == (5.0, 5.0, 5.0)


def test_plot_aggregates_seeds(results):
    out, rows = results
    summary = collect(out, "guest_mem", "time.cpu.s", hue="policy")
    assert summary.x == "params.guest_mem" and summary.hue == "policy"
    points = summary.series[(None, "deferred")]
    assert [p.x for p in points] == [1 << 30, 2 << 30] and all(p.n == 3 for p in points)
    values = [r["time.cpu.s"] for r in rows
              if r["policy"] == "deferred" and r["params.guest_mem"] == 1 << 30]
    assert math.isclose(points[0].mean, sum(values) / 3) and points[0].low <= points[0].mean <= points[0].high


@pytest.mark.parametrize("ext", ["png", "svg"])
def test_plot_file_format_follows_extension(results, tmp_path, ext):
    out, _ = results
    target = tmp_path / f"plot.{ext}"
    res = invoke("results", str(out), "--plot", str(target), "--x", "guest_mem", "--y", "guest_faults",
                 "--hue", "policy", "--facet", "scenario")
    assert res.exit_code == 0, res.output
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG") if ext == "png" else b"<svg" in data[:500]
    assert not list(tmp_path.glob(".tmp-*"))


def test_plot_refuses_mixed_points_and_bad_paths(results, tmp_path):
    out, _ = results
    with pytest.raises(UsageError, match="policy takes 2 values within one plotted point"):
        collect(out, "guest_mem", "guest_faults")
    assert collect(out, "guest_mem", "guest_faults", where="policy = 'deferred'").series
    res = invoke("results", str(out), "--plot", str(tmp_path / "p.gif"), "--x", "guest_mem", "--y", "guest_faults")
    assert res.exit_code == 2 and ".png, .svg or .pdf" in res.stderr
    with pytest.raises(UsageError, match="not numbers"):
        collect(out, "guest_mem", "policy", hue="policy")
