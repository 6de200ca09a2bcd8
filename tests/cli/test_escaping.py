"""User strings reach the terminal as written: rich markup in names, descriptions and cost bases is escaped."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app

runner = CliRunner()

NAMES = ["[/]", "snp-test [v2]", "[bold red]loud[/]"]


@pytest.mark.parametrize("name", NAMES)
def test_scenario_names_print_as_written(tmp_path: Path, name: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f'name = "{name}"\ndescription = "mine [draft]"\narch = "snp"\nguest_mem = "1GiB"\n'
                    '[backing]\npage = "2M"\n')
    costs = tmp_path / "costs.toml"
    costs.write_text('[rows.6]\nbasis = "my [measured] basis [/]"\n')
    for argv in (["scenarios", "describe", str(path)], ["run", str(path), "--costs", str(costs)],
                 ["compare", str(path)]):
        res = runner.invoke(app, argv, env={"COLUMNS": "200"})
        assert res.exit_code == 0, (argv, res.output)
        assert name in res.output, (argv, res.output)
    res = runner.invoke(app, ["scenarios", "describe", str(path)], env={"COLUMNS": "200"})
    assert "mine [draft]" in res.output


def test_cost_basis_with_brackets_prints_as_written(tmp_path: Path) -> None:
    costs = tmp_path / "costs.toml"
    costs.write_text('[rows.3]\nbasis = "memset [v2] per page [/]"\n')
    res = runner.invoke(app, ["run", "churn-pingpong", "--costs", str(costs)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "memset [v2] per page [/]" in res.output
    assert "[work, 2 CPUs]" in res.output  # the boot segments' bounds, once eaten as markup


@pytest.mark.parametrize("width", ["200", "30"])
def test_query_column_names_print_as_written(tmp_path: Path, width: str) -> None:
    """A results column named like markup, at a width that fits and one that prints in blocks."""
    from gmemlab.sweep.dataset import Dataset
    from gmemlab.sweep.executors import SerialExecutor
    from gmemlab.sweep.runner import run_tasks
    from gmemlab.sweep.spec import parse_sweep
    from gmemlab.sweep.tasks import expand

    text = 'seeds = 1\n[fixed]\nscenario = "churn-pingpong"\nset.guest_mem = "1GiB"\nset.runtime_s = 1\n'
    with Dataset(tmp_path) as ds:
        run_tasks(expand(parse_sweep(text, "one.toml", "one", None)), SerialExecutor(), dataset=ds)
    sql = 'SELECT 1 AS "[/]", \'[bold]x[/]\' AS "[v2] name", 3 AS "third column", 4 AS "fourth column"'
    res = runner.invoke(app, ["results", str(tmp_path), "--sql", sql], env={"COLUMNS": width})
    assert res.exit_code == 0, res.output
    for text in ("[/]", "[bold]x[/]", "[v2] name"):
        assert text in res.output, res.output
