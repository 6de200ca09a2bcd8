"""``gmemlab sensitivity`` (simulator issue item 5): each assumed weight 0.1x-10x, reprice, find flips."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.sim.costs import CostTable
from gmemlab.sim.run import simulate
from gmemlab.sim.sensitivity import analyse, assumed_rows, sensitivity

SMALL = ["guest_mem=4GiB", "runtime_s=10"]


@pytest.fixture(scope="module")
def pair():
    return simulate("snp-lazy-accept-64g", "eager", SMALL), simulate("snp-lazy-accept-64g", "deferred", SMALL)


def test_repricing_equals_simulating_again(pair):
    """The counts do not depend on the weights: repricing a run equals running it with the other table."""
    eager, _ = pair
    scaled = CostTable().scaled({"26": 3.0, "41-4k": 0.5})
    again = simulate("snp-lazy-accept-64g", "eager", SMALL, costs=scaled)
    assert eager.times_under(scaled) == again.times


def test_only_assumed_weights_vary():
    table = CostTable()
    rows = assumed_rows(table)
    assert "26" in rows and "41-4k" in rows
    assert not {"6", "7", "12", "16", "23", "24", "36"} & set(rows)  # published, derived or derived-from


def test_the_data_plane_flips_where_2m_costs_what_4k_does(pair):
    """A/B of the translation overhead crosses 1 exactly where the 2M miss rate (0.02 x f) reaches the 4K one
    (0.10): f = 5; the bisection finds it."""
    result = analyse(*pair)
    flips = {s.row: s.flip_at for s in result.flips("dataplane")}
    assert flips["41-2m"] == pytest.approx(5.0, rel=1e-6)
    assert flips["41-4k"] == pytest.approx(0.2, rel=1e-6)
    assert not result.flips("cpu")  # deferred stays cheaper in CPU time whatever one assumed weight is


def test_a_flip_is_found_when_a_weight_decides(pair):
    """Over a wide range (0.001x-1000x, exits free) some weights flip a figure; at each reported factor the
    two policies' figures must be equal (A/B = 1): the crossing is where the analysis says."""
    eager, deferred = pair
    table = CostTable().scaled({"26": 0.0})
    result = analyse(eager, deferred, table, factors=(0.001, 1000.0))
    for fig in ("boot", "cpu"):
        for s in result.flips(fig):
            at = table.scaled({s.row: s.flip_at})
            a, b = eager.times_under(at), deferred.times_under(at)
            va, vb = (a.boot.seconds, b.boot.seconds) if fig == "boot" else (a.cpu.seconds, b.cpu.seconds)
            assert va / vb == pytest.approx(1.0, rel=1e-6)
    assert any(result.flips(f) for f in ("boot", "cpu", "dataplane"))


def test_runs_go_through_the_given_map():
    calls = []

    def recording_map(fn, items):
        items = list(items)
        calls.append(len(items))
        return [fn(i) for i in items]

    result = sensitivity("churn-pingpong", ["eager", "deferred"], ["runtime_s=2"], map=recording_map)
    assert calls == [2] and result.policies == ("eager", "deferred")


def test_cli_tables_json_plot_and_bad_input(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["sensitivity", "churn-pingpong", "--policy", "eager", "--policy", "deferred",
                              "--set", "runtime_s=2", "--plot", str(tmp_path / "t.png")])
    assert out.exit_code == 0, out.output
    assert "boot critical path" in out.output and (tmp_path / "t.png").stat().st_size > 10_000
    j = json.loads(runner.invoke(app, ["sensitivity", "churn-pingpong", "--policy", "eager", "--policy",
                                       "deferred", "--set", "runtime_s=2", "--json"]).output)
    assert set(j["figures"]) == {"boot", "cpu", "dataplane"}
    for args, message in (
        (["--policy", "eager"], "exactly two"),
        (["--policy", "eager", "--policy", "eagre"], "did you mean 'eager'"),
        (["--policy", "eager", "--policy", "deferred", "--min", "0"], "0 < min < max"),
        (["--policy", "eager", "--policy", "deferred", "--plot", str(tmp_path)], "is a directory"),
    ):
        result = runner.invoke(app, ["sensitivity", "churn-pingpong", *args])
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output, args
