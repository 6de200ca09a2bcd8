"""A sweep killed mid-way (SIGKILL, or Ctrl-C to its process group) keeps every finished run, and the same
command resumes without running any of them again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gmemlab.sweep import query

from .conftest import FAST, cli

SEEDS = 150  # ~10 ms each: a few seconds on one worker


def start(path: Path, out: Path) -> subprocess.Popen[str]:
    code = "import sys; from gmemlab.cli import main; sys.argv = ['gmemlab', *sys.argv[1:]]; main()"
    return subprocess.Popen([sys.executable, "-c", code, "sweep", str(path), "--workers", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_parts(out: Path, proc: subprocess.Popen[str], n: int) -> None:
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < n:
        assert proc.poll() is None, f"the sweep ended before it was interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "no part files appeared"
        time.sleep(0.02)


def finished(out: Path) -> dict[str, str]:
    con = query.connect(out)
    return dict(con.execute("SELECT input_hash, CAST(finished_at AS VARCHAR) FROM all_runs").fetchall())


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_killed_sweep_resumes_without_repeating_finished_runs(sweep_file, tmp_path, how):
    path = sweep_file(FAST.format(name="killme", seeds=SEEDS))
    out = tmp_path / "results"
    proc = start(path, out)
    try:
        wait_for_parts(out, proc, 3)
        if how == "SIGKILL":
            proc.kill()  # the main process only, as the OOM killer would
            proc.wait(timeout=30)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 3, err
            assert "interrupted" in err and "run the same command to resume" in err and "Traceback" not in err
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by SIGKILL
        proc.wait(timeout=30)
    assert not list(out.glob(".tmp-*")) or how == "SIGKILL"
    before = finished(out)
    assert 0 < len(before) < SEEDS
    result = cli("sweep", str(path), "--workers", "1", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped"] == len(before) and summary["ran"] == SEEDS - len(before)
    after = finished(out)
    assert len(after) == SEEDS  # all_runs: every run once, none repeated
    assert all(after[h] == t for h, t in before.items())  # the finished runs were not run again
    assert not list(out.glob(".tmp-*"))
