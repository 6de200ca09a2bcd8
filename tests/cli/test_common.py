"""The machinery every command shares: exit status, one error style, internal errors, checks, atomic output."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gmemlab import __version__
from gmemlab.checks import check_int, check_number, nonfinite_path
from gmemlab.cli import app
from gmemlab.cli.common import ExitCode, _readable_type, did_you_mean, fit_table, unknown
from gmemlab.errors import UsageError
from gmemlab.output import atomic_file, atomic_write, check_output, save_figure

runner = CliRunner()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        check_number(value)


@pytest.mark.parametrize(("value", "kwargs", "needle"), [
    (1 << 64, {"min": 0}, "64 bits"),
    (-(1 << 63) - 1, {}, "64 bits"),
    (1.5, {"integer": True}, "integer"),
    (True, {}, "number"),
    ("3", {}, "number"),
    (5, {"max": 4}, "at most 4"),
    (-1, {"min": 0}, "at least 0"),
])
def test_numbers_out_of_range_or_of_the_wrong_kind(value: object, kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        check_number(value, **kwargs)


def test_good_numbers_pass() -> None:
    assert check_number(3) == 3.0 and isinstance(check_number(3), float)
    assert check_int((1 << 64) - 1, 0, (1 << 64) - 1) == (1 << 64) - 1


def test_nonfinite_path_names_the_key() -> None:
    assert nonfinite_path({"a": {"b": [1, 2.0, math.nan]}}) == ("a.b[2]", "must be a finite number, got nan")
    assert nonfinite_path({"rows": {"6": {"weight": 1 << 70}}})[0] == "rows.6.weight"
    assert nonfinite_path({"a": [1, {"b": "x"}], "c": True}) is None


def test_atomic_write_failure_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"partial")
        raise RuntimeError("disk full, say")
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left behind
    atomic_write(target, "new")
    assert target.read_text() == "new"


def test_atomic_write_keeps_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("x")
    target.chmod(0o640)
    atomic_write(target, "y")
    assert target.stat().st_mode & 0o777 == 0o640


def test_atomic_write_keeps_links_pipes_and_devices(tmp_path: Path) -> None:
    """A symbolic link stays a link (its file is replaced); a pipe or device (``--out /dev/stdout``) is written
    in place: renaming over it put a regular file in place of the node (``--junit /dev/full`` as root replaced
    the device)."""
    import stat
    import threading

    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real.name)
    atomic_write(link, "new")
    assert link.is_symlink() and real.read_text() == "new"

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert check_output(fifo, "--out")[0] == fifo
    atomic_write(fifo, "through the pipe", "--out")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    if os.path.exists("/dev/full"):
        with pytest.raises(UsageError, match="--junit /dev/full: not written"):
            atomic_write("/dev/full", "x", "--junit")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.parametrize(("name", "needle"), [
    ("", "empty file name"), ("  ", "empty file name"), ("plot.bmp", "extension .bmp"), ("plot", "no extension"),
    ("missing/plot.png", "does not exist"), (".", "is a directory"),
])
def test_check_output_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=needle) as info:
        check_output(name, "--plot", ("png", "svg", "pdf"))
    assert str(info.value).startswith("--plot")


@pytest.mark.parametrize(("ext", "magic"), [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_figure_format_follows_the_extension(tmp_path: Path, ext: str, magic: bytes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    try:
        path = save_figure(fig, tmp_path / f"f.{ext.upper()}")
    finally:
        plt.close(fig)
    assert path.read_bytes().startswith(magic)


def test_version_and_help_show_the_exit_status() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"gmemlab {__version__}"
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0 and "Exit status: 0 success" in res.output and "<bool>" not in res.output


def test_help_paragraphs_are_reflowed() -> None:
    """typer's rich help keeps every line break of a docstring and wraps again: hard-wrapped docstrings printed
    half-empty lines. Sentences are joined; a line ending a sentence still ends its line."""
    from gmemlab.cli.common import reflow

    assert reflow("One line\n  and its end.\nA new line:\n  joined\n\nNext paragraph") == (
        "One line and its end.\nA new line:\njoined\n\nNext paragraph")
    res = CliRunner().invoke(app, ["conformance", "--help"], env={"COLUMNS": "200"})
    assert "this machine's kernel for the profile the kernel is (the other profiles" in res.stdout


def test_help_types_are_what_a_user_types() -> None:
    assert _readable_type("<bool>") is None
    assert _readable_type("<list[str]>") == "TEXT ..."
    assert _readable_type("<model|kernel|both>") == "[model|kernel|both]"
    assert _readable_type("<int>") == "INTEGER"


def test_parser_errors_are_one_line_with_exit_status_2() -> None:
    for argv, needle in [(["run", "x", "--sed", "1"], "--sed"), (["conformance", "--backend", "modle"],
                                                                  "did you mean 'model'"),
                         (["races", "--max-states", "abc"], "'abc'"), (["scenarios", "lst"], "'lst'"),
                         (["no-such-command"], "no-such-command")]:
        res = runner.invoke(app, argv)
        assert res.exit_code == ExitCode.USAGE, (argv, res.output)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("gmemlab: error: "), res.stderr
        assert needle in res.stderr and "╭" not in res.output


def test_internal_error_is_one_line_and_a_saved_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gmemlab.cli.profiles as profiles

    def explode(name: str) -> dict:
        raise ZeroDivisionError("planted\nbug")

    monkeypatch.setattr(profiles, "describe", explode)
    monkeypatch.setenv("GMEMLAB_CRASH_DIR", str(tmp_path))
    res = runner.invoke(app, ["profiles", "--json"])
    assert res.exit_code == ExitCode.INTERNAL
    assert res.stderr.count("\n") == 1 and "ZeroDivisionError: planted bug" in res.stderr
    (trace,) = tmp_path.glob("gmemlab-crash-*.txt")
    assert str(trace) in res.stderr and "Traceback" in trace.read_text() and "Traceback" not in res.output


def test_subprocess_interrupt_and_internal_error_exit_status(tmp_path: Path) -> None:
    code = ("import sys, gmemlab.cli.profiles as p\n"
            "def boom(name): raise {exc}\n"
            "p.describe = boom\n"
            "from gmemlab.cli import main\n"
            "main(['profiles', '--json'])\n")
    env = {**os.environ, "GMEMLAB_CRASH_DIR": str(tmp_path)}
    for exc, status, needle in [("KeyboardInterrupt()", ExitCode.INCOMPLETE, "interrupted"),
                                ("RuntimeError('x')", ExitCode.INTERNAL, "internal error")]:
        proc = subprocess.run([sys.executable, "-c", code.format(exc=exc)], capture_output=True, text=True, env=env)
        assert proc.returncode == status, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_did_you_mean_and_unknown() -> None:
    assert did_you_mean("linux-6.81", ["linux-6.18", "rfc-v2"]) == " (did you mean 'linux-6.18'?)"
    err = unknown("profile", "linux-9", ["linux-6.18", "rfc-v2"], "--profile")
    assert str(err).startswith("--profile 'linux-9': unknown profile") and "known: linux-6.18, rfc-v2" in str(err)


def test_fit_table_fits_80_columns_and_drops_nothing() -> None:
    """At 80 columns a 63-character name folds rather than push the status column out; wide enough, it is
    whole; narrower still, it prints in parts, nothing dropped."""
    from rich.console import Console

    name = "test_conversions_should_fail_if_memory_has_elevated_refcount_1G"
    table = fit_table([_col("case", "id"), _col("§", "id"), _col("backend", "id"), _col("profile", "id"),
                       _col("status", "id"), _col("detail")],
                      [(name, "3.6", "kernel", "rfc-v2", "fail", "a long detail " * 12),
                       ("[/]", "3.1", "model", "linux-6.18", "pass", None)])
    for width, whole in ((80, False), (160, True)):
        console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(table)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        assert re.search(r"case\s+§\s+backend\s+profile\s+status\s+detail", text), text
        assert "fail" in text and "pass" in text and "[/]" in text and (name in text) == whole
    narrow = Console(width=30, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    narrow.print(table)
    text = narrow.export_text()
    assert max(len(line) for line in text.splitlines()) <= 30
    for word in ("case", "§", "backend", "profile", "status", "detail", "fail", "pass", "kernel", "linux-6.18"):
        assert word in text, word


def test_a_wide_comparison_prints_in_parts() -> None:
    """Many value columns (compare with every policy): the first column is repeated with as many of the
    others as fit, so nothing is dropped."""
    from rich.console import Console
    from rich.table import Table

    from gmemlab.cli.common import fitted

    table = Table(title="compare")
    table.add_column("metric")
    heads = ["eager", "eager+merge-never", "eager+staged", "eager+staged+merge-never", "deferred",
             "deferred+direct"]
    for h in heads:
        table.add_column(h, justify="right")
    table.add_row("splits 1G", *(f"{i},000,000" for i in range(6)))
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(fitted(table))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert all(h in text for h in heads) and all(f"{i},000,000" in text for i in range(6))
    assert text.count("splits 1G") >= 2


def _col(header: str, kind: str = "text"):  # type: ignore[no-untyped-def]
    from gmemlab.cli.common import Col

    return Col(header, kind)


def test_typer_exit_codes_pass_through() -> None:
    sub = typer.Typer()

    @sub.command()
    def three() -> None:
        raise typer.Exit(3)

    from gmemlab.cli.common import run_main

    assert run_main(lambda: sub([], standalone_mode=False)) == 3


def test_a_missing_optional_library_disables_one_command_only() -> None:
    """hypothesis is a dev dependency: without it `gmemlab fuzz` says so in one line; the rest works."""
    code = ("import sys\nsys.modules['hypothesis'] = None\nfrom gmemlab.cli import main\n"
            "main(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", code, "fuzz", "--backend", "model"], capture_output=True, text=True)
    assert proc.returncode == ExitCode.USAGE and "needs the Python package 'hypothesis'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-c", code, "profiles", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0 and '"profiles"' in proc.stdout


def test_a_reader_that_goes_away_means_incomplete_not_failure() -> None:
    """`gmemlab ... | head -1`: no traceback, no 'failure' status (rich alone would exit 1)."""
    proc = subprocess.Popen([sys.executable, "-m", "gmemlab", "scenarios", "events", "churn-pingpong", "--limit",
                             "100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "80"})
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INCOMPLETE and b"Traceback" not in err, err
