"""The recorded kernels as an oracle (issue 15 item 5): every row id of realkernel-private.md is reproduced by
the model under its column's profile and host facts, or listed out of scope / pending with the reason."""

from __future__ import annotations

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.cli.oracle import model_factory
from gmemlab.conformance.oracle import (
    COLUMNS,
    OUT_OF_SCOPE,
    PENDING,
    V13_DIFFERS,
    compare,
    reproduce,
)
from gmemlab.conformance.oracle.recording import default_path, load, parse
from gmemlab.model.profiles import Linux74, Linux74V8

PATH = default_path()
needs_recording = pytest.mark.skipif(PATH is None, reason="realkernel-private.md is not beside the project "
                                     "(../shared/spec, or set GMEMLAB_REALKERNEL_PRIVATE)")


@pytest.fixture(scope="module")
def recorded() -> dict[str, dict[str, str]]:
    assert PATH is not None
    return load(PATH)


@pytest.fixture(scope="module")
def produced() -> dict[str, dict[str, str]]:
    return {c: reproduce(col, model_factory(col)) for c, col in COLUMNS.items()}


@needs_recording
def test_every_row_is_reproduced_or_listed(recorded, produced) -> None:  # type: ignore[no-untyped-def]
    bad = [v for v in compare(recorded, produced) if v.status not in ("reproduced", "out of scope", "pending")]
    assert not bad, "\n".join(f"{v.row} [{v.column}] {v.status}: recorded {v.recorded!r}, model {v.produced!r}"
                              for v in bad)
    assert len(recorded) >= 271, "fewer row ids than the recording had when this was written"
    for c, cells in produced.items():
        unknown = set(cells) - set(recorded)
        assert not unknown, f"column {c} produced rows the recording does not have: {sorted(unknown)}"


@needs_recording
def test_listings_name_real_rows_with_reasons(recorded) -> None:  # type: ignore[no-untyped-def]
    for listing in (OUT_OF_SCOPE, PENDING):
        for row, reason in listing.items():
            assert row in recorded, f"{row} is listed but is not a row of the recording"
            assert len(reason) > 20, f"{row}: say why"
    assert not set(OUT_OF_SCOPE) & set(PENDING)
    for (column, row), reason in V13_DIFFERS.items():
        assert row in recorded and column in COLUMNS and reason


@needs_recording
def test_linux_7_4_differs_from_the_in_place_kernels_exactly_where_listed(recorded) -> None:  # type: ignore[no-untyped-def]
    """The v13 profile under B's host facts: every difference from the v8 recording is listed with its reason
    (and the v8 variant reproduces those rows, test above)."""
    found = set()
    for c in ("B", "B0", "Bv"):
        col = replace(COLUMNS[c], profile="linux-7.4")
        for v in compare(recorded, {c: reproduce(col, model_factory(col))}):
            if v.status not in ("reproduced", "out of scope", "pending"):
                found.add((c, v.row))
    assert found == set(V13_DIFFERS)


@needs_recording
def test_a_model_bug_is_caught(recorded, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The oracle can fail: the v8 variant given v13's GMEM_ONLY rule no longer reproduces column B."""
    monkeypatch.setattr(Linux74V8, "gmem_only", Linux74.gmem_only)
    col = COLUMNS["B"]
    bad = {v.row for v in compare(recorded, {"B": reproduce(col, model_factory(col))}) if v.status == "differs"}
    assert {"4d/flags0", "4e/after_close_mapped"} <= bad


def test_parse() -> None:
    text = ("| id | op | A | B | B0 | Bv |\n|---|---|---|---|---|---|\n"
            "| `1/x/MMAP|INIT_SHARED` | a \\| b | ok | — | EINVAL | ok — 0.019 s |\n")
    rows = parse(text)
    assert rows == {"1/x/MMAP|INIT_SHARED": {"op": "a | b", "A": "ok", "B": "—", "B0": "EINVAL",
                                             "Bv": "ok — 0.019 s"}}
    with pytest.raises(ValueError, match="expected 6 cells"):
        parse("| `1/y` | a | ok |\n")


def test_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    bad = tmp_path / "x.md"
    bad.write_text("nothing here\n")
    res = runner.invoke(app, ["oracle", "--record", str(bad)])
    assert res.exit_code == 2 and "no table rows" in res.stderr
    res = runner.invoke(app, ["oracle", "--column", "Q"])
    assert res.exit_code == 2 and "'Q'" in res.stderr
    if PATH is not None:
        res = runner.invoke(app, ["oracle", "--column", "B", "-k", "3/arg/", "--json"])
        assert res.exit_code == 0 and '"reproduced"' in res.output
