"""``gmemlab run`` and ``gmemlab compare`` through the CLI: output, JSON shape, plot, bad input (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app

runner = CliRunner()
SMALL = ["--set", "guest_mem=1GiB"]


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point, for the one-line error and exit status 2 (main() handles those)."""
    code = "import sys; from gmemlab.cli import main; sys.argv = ['gmemlab', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_run_prints_metrics_time_and_cost_rows():
    result = invoke("run", "snp-lazy-accept-64g", "--policy", "deferred", *SMALL)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "policy deferred" in out and "splits 1G" in out and "stage-2 mapped at 2M" in out
    assert "Modelled time" in out and "accept" in out and "boot critical path" in out and "assumed" in out
    assert "Cost rows used" in out and "PVALIDATE" in out and "derived" in out  # weight with its tag


def test_run_json_shape():
    result = invoke("run", "tdx-boot-64g", "--json", "--seed", "3", *SMALL)
    assert result.exit_code == 0, result.output
    j = json.loads(result.output)
    assert {"scenario", "title", "overrides", "policy", "seed", "params", "metrics", "time"} <= set(j)
    assert j["scenario"] == "tdx-boot-64g" and j["policy"] == "eager" and j["seed"] == 3
    assert j["overrides"] == SMALL[1::2] and j["title"] == f"tdx-boot-64g ({', '.join(SMALL[1::2])})"
    assert j["params"]["guest_mem"] == 1 << 30
    assert set(j["time"]["cpu"]["by_category"]) >= {"accept", "exits", "split_merge"}
    assert j["metrics"]["userspace_exits"] > 0


def test_compare_side_by_side_and_json_list():
    result = invoke("compare", "snp-lazy-accept-64g", "--policy", "eager", "--policy", "deferred", *SMALL)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "metric" in line)
    assert "eager" in header and "deferred" in header
    result = invoke("compare", "snp-lazy-accept-64g", "--policy", "eager", "--policy", "deferred", "--json",
                    *SMALL)
    j = json.loads(result.output)
    assert isinstance(j, list) and [o["policy"] for o in j] == ["eager", "deferred"]


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "run.png"
    result = invoke("compare", "snp-lazy-accept-64g", "--plot", str(path), *SMALL)
    assert result.exit_code == 0, result.output
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "snp-lazy-acept-64g"], "did you mean 'snp-lazy-accept-64g'"),
        (["run", "snp-lazy-accept-64g", "--policy", "lazy"], "is not one of: eager"),
        (["compare", "snp-lazy-accept-64g", "--policy", "eager", "--policy", "nope"], "is not one of: eager"),
        (["run", "snp-lazy-accept-64g", "--set", "guest_mem=64GB"], "did you mean GiB"),
        (["run", "snp-lazy-accept-64g", "--set", "acept.mode=eager"], "unknown key"),
        (["run", "snp-lazy-accept-64g", "--set", "vcpus"], "expected KEY=VALUE"),
        (["run", "snp-lazy-accept-64g", "--set", "vcpus=-1"], "vcpus"),
        (["run", "snp-lazy-accept-64g", "--plot", "/nonexistent-dir/x.png"], "does not exist"),
        (["run", "snp-lazy-accept-64g", "--costs", "/nonexistent.toml"], "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmemlab: error:"), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_plot_into_a_directory_is_refused(tmp_path):
    proc = cli("run", "snp-lazy-accept-64g", "--plot", str(tmp_path))
    assert proc.returncode == 2 and "is a directory" in proc.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("arch = 'snp'\nguest_mem = \n", "invalid TOML"),
        ("arch = 'snp'\nguest_men = '1GiB'\n", "did you mean 'guest_mem'"),
        ("arch = 'sev'\n", "arch"),
        ("arch = 'none'\nguest_mem = '1GiB'\n[accept]\nmode = 'lazy'\n", "accept.mode"),
    ],
)
def test_malformed_scenario_file(scenario_file, text, message):
    proc = cli("run", scenario_file(text))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
