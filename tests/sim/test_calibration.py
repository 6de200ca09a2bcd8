"""``gmemlab validate`` (simulator issue item 6; docs/calibration.md): every published figure, every check within
2x, no weight taken from the figure it is checked against."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.sim.calibration import CHECKED, FIGURES, INPUT, Published, independence, validate
from gmemlab.sim.costs import SOURCES, CostTable


@pytest.fixture(scope="module")
def rows():
    return validate()


def test_every_check_is_within_2x(rows):
    checks = [r for r in rows if r.figure.status in CHECKED]
    assert len(checks) >= 8
    bad = {r.figure.id: r.ratio for r in checks if not r.ok}
    assert not bad, f"outside 2x: {bad}"


def test_no_check_rests_on_a_weight_from_its_own_source(rows):
    table = CostTable()
    for r in rows:
        if r.figure.status in CHECKED:
            assert not independence(r.figure, table), r.figure.id
        assert r.figure.source in SOURCES


def test_inputs_say_which_rows_share_their_source(rows):
    by_id = {r.figure.id: r for r in rows}
    assert by_id["V3b"].figure.status == INPUT and by_id["V3b"].shared_rows == ("6",)
    assert by_id["V5"].shared_rows == ("23", "24")  # row 24 is derived from row 23
    assert by_id["V4a"].shared_rows == ("16",)


def test_every_listed_figure_is_there():
    """workloads.md §5.8 and linux-7.md §4: the 1.04e9 cycles and the 7%, 622/6 splits, 153 vs 8 µs, the
    >= 26 s xarray store, 2.28 MB per 1G split, VFIO 16 GiB -> 1.2 GiB, OpenHCL, TDX ~4 MB, memdescs."""
    ids = {f.id for f in FIGURES}
    assert {"V1", "V2a", "V2b", "V2c", "V3a", "V3b", "V4a", "V4b", "V4e", "V5", "V6", "V7", "V7b", "V8", "V9"} <= ids


def test_a_weight_taken_from_the_check_is_detected():
    """The independence check can fail: a figure whose source is also its weight's."""
    circular = Published("X", "SET_ATTR over 1 TiB", 26.0, "s", "roth-16g", "check", ("12",), "")
    assert independence(circular, CostTable()) == ("12",)
    derived = replace(circular, source="openhcl-50", rows=("24",))
    assert independence(derived, CostTable()) == ("24",)  # through row 23, which row 24 is derived from


def test_a_wrong_weight_fails_validation(tmp_path):
    """Scaling row 12 by 10 puts V1 outside 2x; the command exits 1 and names it."""
    costs = tmp_path / "costs.toml"
    costs.write_text("[rows.12]\nweight = 1.2\n")
    result = CliRunner().invoke(app, ["validate", "--costs", str(costs), "--no-notes"])
    assert result.exit_code == 1
    assert "outside 2x: V1" in result.output


def test_validate_command_and_json():
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert "within 2x" in result.output and "roth-16g" in result.output
    result = CliRunner().invoke(app, ["validate", "--json"])
    rows = json.loads(result.output)
    assert {"id", "published", "simulated", "ratio", "status", "ok", "source", "shared_source_rows"} <= set(rows[0])


class _Recording:
    """A :class:`Runs` stand-in that records every (scenario, overrides) a figure asks for."""

    def __init__(self, runs):
        self.runs, self.calls = runs, []
        self.costs = runs.costs

    def __call__(self, scenario, sets=(), policy="eager"):
        self.calls.append((scenario, tuple(sets)))
        return self.runs(scenario, sets, policy)


def _said(setup: str) -> set[tuple[str, frozenset[str]]]:
    """The runs a figure's ``setup`` line names: "gmemlab run SCENARIO --set A --set B [...]"."""
    out = set()
    for part in setup.split("gmemlab run ")[1:]:
        words = [w.rstrip(",;") for w in part.replace("(", " ").split()]
        sets = frozenset(words[i + 1] for i, w in enumerate(words) if w == "--set" and i + 1 < len(words))
        out.add((words[0], sets))
    return out


def _check_setup_lines(figures):
    from gmemlab.sim.calibration import Runs

    runs = Runs()
    for figure in figures:
        if figure.simulate is None:
            continue
        rec = _Recording(runs)
        figure.simulate(rec)
        said = _said(figure.setup)
        for scenario, sets in rec.calls:
            assert (scenario, frozenset(sets)) in said, (
                f"{figure.id}: ran {scenario} {list(sets)} but its setup line says {figure.setup!r}")


def test_every_run_is_the_one_its_setup_line_names():
    """A reader re-runs a figure from its setup line: it must name every run and override the figure uses
    (figures that only read a weight run nothing)."""
    _check_setup_lines(FIGURES)


def test_a_setup_line_missing_an_override_is_caught():
    v9 = next(f for f in FIGURES if f.id == "V9")
    with pytest.raises(AssertionError, match="V9: ran tdx-boot-64g"):
        _check_setup_lines([replace(v9, setup=v9.setup.replace(" --set runtime_s=0", ""))])
