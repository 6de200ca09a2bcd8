"""docs/scenario-reference.md is generated from the schema and must be current; export gives a starting file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.workload.reference import keys, markdown
from gmemlab.workload.scenario import builtin_names, load_scenario

DOC = Path(__file__).resolve().parents[2] / "docs" / "scenario-reference.md"


def test_reference_doc_is_current() -> None:
    assert DOC.read_text() == markdown(), (
        "docs/scenario-reference.md is out of date: gmemlab scenarios reference --out docs/scenario-reference.md")


def test_reference_lists_every_key_settable_with_set() -> None:
    listed = {k.key for k in keys()}
    for key in ("guest_mem", "accept.pre_watermark.per_vcpu", "runtime_churn.size_dist",
                "shared_regions.NAME.size", "populate.ranges[N].gpa", "arch_limits.private_max_level"):
        assert key in listed
    for k in keys():
        assert k.type and k.default, k
    undocumented = [k.key for k in keys() if not k.meaning]
    assert not undocumented, f"give these keys option(..., doc=...) in workload/scenario.py: {undocumented}"


def test_export_writes_a_starting_file_that_loads(tmp_path: Path) -> None:
    out = tmp_path / "mine.toml"
    res = CliRunner().invoke(app, ["scenarios", "export", builtin_names()[0], "--out", str(out)])
    assert res.exit_code == 0, res.output
    exported, builtin = load_scenario(str(out)), load_scenario(builtin_names()[0])
    assert dataclasses.replace(exported, source="") == dataclasses.replace(builtin, source="")
    before = out.read_bytes()
    res = CliRunner().invoke(app, ["scenarios", "export", builtin_names()[0], "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.stderr and out.read_bytes() == before
    res = CliRunner().invoke(app, ["scenarios", "export", "snp-lazy-acept-64g"])
    assert res.exit_code == 2 and "did you mean 'snp-lazy-accept-64g'" in res.stderr
