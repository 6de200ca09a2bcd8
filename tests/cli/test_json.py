"""``--json`` wherever a command prints a result (issue 13 item 5): the output parses as JSON, nothing else is
printed on stdout."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gmemlab import __version__
from gmemlab.cli import app

runner = CliRunner()


@pytest.mark.parametrize("argv", [
    ["races", "--list"],
    ["races", "rfc-v2", "--threads", "host_fault,convert_private"],
    ["profiles"],
    ["profiles", "linux-7.3"],
    ["scenarios", "list"],
    ["scenarios", "describe", "churn-pingpong"],
    ["scenarios", "events", "churn-pingpong", "--limit", "2"],
    ["sweep", "--list"],
    ["sweep", "guest-size", "--dry-run"],
    ["fuzz", "--backend", "model", "--examples", "1", "--max-ops", "5"],
    ["races", "roth", "--max-states", "50"],
    ["conformance", "--profile", "linux-6.18", "-k", "test_file_size"],
    ["run", "churn-pingpong", "--set", "guest_mem=1GiB", "--set", "runtime_s=1"],
], ids=lambda argv: "-".join(argv[:2]))
def test_json_output_parses(argv: list[str]) -> None:
    res = runner.invoke(app, [*argv, "--json"])
    assert res.exit_code in (0, 1, 3), res.stderr
    data = json.loads(res.stdout)
    assert data
    if isinstance(data, dict):  # a result object says which gmemlab produced it
        assert data["gmemlab_version"] == __version__


def test_races_list_json_names_what_the_text_lists() -> None:
    data = json.loads(runner.invoke(app, ["races", "--list", "--json"]).stdout)
    text = runner.invoke(app, ["races", "--list"]).stdout
    for kind in ("protocols", "paths", "properties"):
        assert data[kind] and all(item["name"] in text for item in data[kind])
