"""`gmemlab conformance` verdicts: one backend skipping a case the other runs is a coverage gap (a failure unless
--allow-gaps), a run that executes nothing exits 3, an internal error exits 4 with the trace saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import gmemlab.cli.conformance as cli_conf
from gmemlab.cli import app
from gmemlab.conformance import CaseResult, coverage_gaps
from gmemlab.errors import UnsupportedByBackend
from gmemlab.model import ModelBackend


def test_coverage_gaps_are_one_sided_skips() -> None:
    r = [CaseResult("a", "3.1", "model", "p", "pass"), CaseResult("a", "3.1", "kernel", "p", "skip", "no cap"),
         CaseResult("b", "3.1", "model", "p", "skip"), CaseResult("b", "3.1", "kernel", "p", "skip"),
         CaseResult("c", "3.1", "model", "p", "pass"), CaseResult("c", "3.1", "kernel", "p", "pass")]
    gaps = coverage_gaps(r)
    assert [(g.case, g.skipped, g.reason) for g in gaps] == [("a", "kernel", "no cap")]


class SkipsMmap(ModelBackend):
    """A 'kernel' that cannot create guest_memfds with MMAP: the cases needing it skip there only."""

    def create_vm(self, vm_type: int = 0):  # type: ignore[no-untyped-def]
        vm = super().create_vm(vm_type)
        create = vm.create_guest_memfd

        def refuse(size: int, flags: int = 0, reserved: tuple[int, ...] = ()) -> Any:
            if flags & 1:
                raise UnsupportedByBackend("MMAP (planted)")
            return create(size, flags, reserved)

        vm.create_guest_memfd = refuse  # type: ignore[method-assign]
        return vm


def _both(monkeypatch: pytest.MonkeyPatch, kernel: Any) -> None:
    monkeypatch.setattr(cli_conf, "kernel_profile", lambda: "linux-6.18")
    monkeypatch.setattr(cli_conf, "backends_for", lambda choice, params=None: {
        "model": lambda profile: ModelBackend(profile), "kernel": kernel})


def test_a_gap_fails_the_run_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    _both(monkeypatch, lambda profile: SkipsMmap(profile))
    res = CliRunner().invoke(app, ["conformance", "--backend", "both", "--json", "-k", "test_mmap"])
    data = json.loads(res.output)
    assert res.exit_code == 1 and data["gaps"] and data["divergences"] == []
    assert all(g["skipped"] == "kernel" and "MMAP (planted)" in g["reason"] for g in data["gaps"])
    assert "rfc-v2" in data["not_compared"]
    res = CliRunner().invoke(app, ["conformance", "--backend", "both", "-k", "test_mmap", "--allow-gaps"])
    assert res.exit_code == 0 and "coverage gaps" in res.output


def test_nothing_ran_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(profile: str) -> ModelBackend:
        raise UnsupportedByBackend("/dev/kvm does not exist (planted)")

    monkeypatch.setattr(cli_conf, "backends_for", lambda choice, params=None: {"kernel": absent})
    res = CliRunner().invoke(app, ["conformance", "--backend", "kernel", "--profile", "linux-6.18"])
    assert res.exit_code == 3, res.output
    res = CliRunner().invoke(app, ["conformance", "--backend", "both", "--profile", "nonsense"])
    assert res.exit_code == 2


def test_internal_error_exits_4(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planted runner bug")

    monkeypatch.setattr(cli_conf, "run_suite", explode)
    monkeypatch.setenv("GMEMLAB_CRASH_DIR", str(tmp_path))
    res = CliRunner().invoke(app, ["conformance", "--backend", "model", "--profile", "linux-6.18"])
    assert res.exit_code == 4 and "planted runner bug" in res.output
    assert list(tmp_path.glob("gmemlab-crash-*.txt"))
