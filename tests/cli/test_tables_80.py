"""Every table a command prints is readable at 80 columns, piped (rich's width when stdout is not a terminal):
no column dropped or folded to nothing, every header whole, every verdict visible.

Each command runs in-process with ``COLUMNS=80``; every rich :class:`~rich.table.Table` it prints is recorded,
and the printed text must hold, for each table, its column headers whole (a header line with all of them in
order; a table printed in parts: the first header beside each of the others; or ``header: value`` lines), and
each verdict cell (the ``status`` column of conformance and oracle, ``flips`` of sensitivity) as many times as
the table has it. validate prints one block per figure below 140 columns: each figure and its verdict.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.conformance.oracle.recording import default_path

runner = CliRunner()
WIDTH = 80
# Columns whose cells are the verdict a reader looks for.
VERDICTS = {"status", "flips", "check"}


def _plain(cell: object) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Table]]:
    """The tables printed while the test runs."""
    seen: list[Table] = []
    original = Console.print

    def record(self: Console, *objects: Any, **kw: Any) -> None:
        seen.extend(o for o in objects if isinstance(o, Table) and o.show_header)
        original(self, *objects, **kw)

    monkeypatch.setattr(Console, "print", record)
    yield seen


def check_tables(output: str, tables: list[Table], required: bool = True) -> None:
    assert tables or not required, "no table printed"
    lines = output.splitlines()
    flat = re.sub(r"\s+", " ", output)
    for table in tables:
        headers = [_plain(c.header) for c in table.columns]
        in_order = r"[\s\u2500-\u257f]+".join(re.escape(h) for h in headers)
        stacked = all(re.search(rf"^{re.escape(h)}: ", output, re.M) for h in headers)
        # in parts (too many columns side by side): the first column's header repeated beside the others'
        heads = [line for line in lines if re.search(rf"(?<![\w+-]){re.escape(headers[0])}(?![\w+-])", line)]
        parts = all(any(re.search(rf"(?<![\w+-]){re.escape(h)}(?![\w+-])", line) for line in heads)
                    for h in headers)
        assert any(re.search(in_order, line) for line in lines) or stacked or parts, (
            f"table {_plain(table.title or '')!r}: headers {headers} not all printed whole")
        for column in table.columns:
            if _plain(column.header) not in VERDICTS:
                continue
            wanted = Counter(_plain(c) for c in column.cells)
            for value, n in wanted.items():
                found = len(re.findall(rf"(?<![\w-]){re.escape(value)}(?![\w-])", flat))
                assert found >= n, f"{_plain(column.header)} {value!r}: {n} in the table, {found} printed"


def run80(*argv: str) -> str:
    res = runner.invoke(app, list(argv), env={"COLUMNS": str(WIDTH), "NO_COLOR": "1"})
    assert res.exit_code in (0, 1, 3), res.output + res.stderr
    return res.stdout


def has_kvm() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


kvm = pytest.mark.skipif(not has_kvm(), reason="needs /dev/kvm (read-write) for the kernel backend")


@pytest.mark.parametrize("argv", [
    pytest.param(["conformance"], id="conformance-model-all-profiles"),
    pytest.param(["conformance", "--profile", "rfc-v2", "-v"], id="conformance-model-rfc-v2-verbose"),
    pytest.param(["conformance", "--backend", "kernel"], id="conformance-kernel", marks=kvm),
    pytest.param(["conformance", "--backend", "both"], id="conformance-both", marks=kvm),
    pytest.param(["oracle", "-v", "-k", "3/arg/"], id="oracle", marks=pytest.mark.skipif(
        default_path() is None, reason="realkernel-private.md is not beside the project ($GMEMLAB_REALKERNEL_PRIVATE "
        "names it): oracle prints no table without it")),
    pytest.param(["profiles"], id="profiles"),
    pytest.param(["scenarios", "list"], id="scenarios-list"),
    pytest.param(["scenarios", "describe", "churn-pingpong"], id="scenarios-describe"),
    pytest.param(["scenarios", "events", "churn-pingpong", "--limit", "3"], id="scenarios-events"),
    pytest.param(["sweep", "--list"], id="sweep-list"),
])
def test_tables_fit_80_columns(argv: list[str], printed: list[Table]) -> None:
    check_tables(run80(*argv), printed)


POLICIES = ["eager", "eager+merge-never", "eager+staged", "deferred", "deferred+direct"]


def test_simulator_tables_fit_80_columns(printed: list[Table]) -> None:
    """run, compare (five policies side by side), sensitivity and validate."""
    small = ["--set", "guest_mem=2GiB", "--set", "runtime_s=1"]
    check_tables(run80("run", "churn-pingpong", *small), printed)
    printed.clear()
    check_tables(run80("compare", "churn-pingpong", *small, *(a for p in POLICIES for a in ("--policy", p))),
                 printed)
    printed.clear()
    check_tables(run80("sensitivity", "churn-pingpong", *small, "--top", "4"), printed)
    printed.clear()
    # validate prints one block per figure below 140 columns: every figure with its verdict
    text = run80("validate")
    check_tables(text, printed, required=False)
    figures = json.loads(run80("validate", "--json"))
    for f in figures:
        assert re.search(rf"^{re.escape(f['id'])}\s", text, re.M), f["id"]
    assert len(re.findall(r"published .*, simulated .*: \S", text)) == len(figures)


def test_results_tables_fit_80_columns(tmp_path: Path, printed: list[Table]) -> None:
    """The results overview and a query (the folder made in-process without worker processes: the kernel
    hygiene tests want no child process left)."""
    from gmemlab.sweep.dataset import Dataset
    from gmemlab.sweep.executors import SerialExecutor
    from gmemlab.sweep.runner import run_tasks
    from gmemlab.sweep.spec import parse_sweep
    from gmemlab.sweep.tasks import expand

    text = ('seeds = 1\n[grid]\nscenario = ["churn-pingpong"]\npolicy = ["eager", "deferred"]\n'
            'set.guest_mem = ["1GiB"]\nset.runtime_s = [1]\n')
    out = tmp_path / "res"
    with Dataset(out) as ds:
        run_tasks(expand(parse_sweep(text, "tiny.toml", "tiny", None)), SerialExecutor(), dataset=ds)
    check_tables(run80("results", str(out)), printed)
    printed.clear()
    check_tables(run80("results", str(out), "--sql",
                       "SELECT scenario, policy, seed, status, \"time.cpu.s\", \"metrics.guest_faults\", "
                       "\"metrics.conversions.ok\", \"metrics.tracking.per_page_entries\" FROM runs"), printed)


def test_the_check_can_fail() -> None:
    """A table rich squeezes past its width (a 63-character identifier that may not fold, as conformance's
    case names were) fails the check: its last columns are dropped."""
    name = "test_conversions_should_fail_if_memory_has_elevated_refcount_2M"
    table = Table("case", "§", "backend", "profile", "status", "detail", box=None)
    for col in table.columns[:4]:
        col.min_width, col.no_wrap = len(name) if col.header == "case" else 10, True
    table.add_row(name, "3.6", "model", "rfc-v2", "pass", "a detail")
    console = Console(width=WIDTH, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(table)
    with pytest.raises(AssertionError, match="headers"):
        check_tables(console.export_text(), [table])


@pytest.mark.parametrize("columns", ["20", "0"])
def test_very_narrow_or_zero_width_loses_nothing(columns: str) -> None:
    """At 20 columns a table prints one ``header: value`` paragraph per cell; ``COLUMNS=0`` (rich printed
    nothing at all at width 0) falls back to the default width."""
    res = runner.invoke(app, ["conformance", "--profile", "linux-6.18", "-k", "test_f"],
                        env={"COLUMNS": columns, "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    data = json.loads(runner.invoke(app, ["conformance", "--profile", "linux-6.18", "-k", "test_f",
                                          "--json"]).stdout)
    flat = re.sub(r"\s+", "", res.stdout)
    assert all(case["name"] in flat for case in data["cases"])
    for status, n in Counter(case["status"] for case in data["cases"]).items():
        assert len(re.findall(rf"status:{status}", flat) if columns == "20" else
                   re.findall(rf"(?<!\w){status}(?!\w)", res.stdout)) == n, status
