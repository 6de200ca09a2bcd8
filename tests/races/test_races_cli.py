"""``gmemlab races``: output, exit codes (1 = property violated, 2 = bad input), JSON, user variants."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CLI = [sys.executable, "-c", "from gmemlab.cli import main; main()", "races"]


def races(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_violation_exits_1_with_numbered_trace():
    out = races("rfc-v2")
    assert out.returncode == 1, out.stderr
    assert "VIOLATED host_maps_private" in out.stdout
    assert "minimal interleaving: 12 steps" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.strip()[:3].strip().isdigit()]
    assert len(lines) == 12
    assert lines[0].split()[:2] == ["1", "T0.1"] and lines[-1].split()[:2] == ["12", "T0.7"]
    assert any(line.split()[1] == "T1.5" for line in lines)


def test_safe_protocol_exits_0():
    out = races("roth", "--threads", "host_fault:0,convert_private:0,guest_fault:0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no property violated" in out.stdout and "every reachable state" in out.stdout


def test_json_output():
    out = races("roth-noread", "--json")
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["violation"]["property"] == "allocation_escapes_conversion"
    assert data["violation"]["steps"] == 5 == len(data["violation"]["trace"])
    assert data["violation"]["trace"][0] == {
        "step": 1, "thread": 1, "thread_step": 1, "path": "convert_private",
        "label": "kvm_gmem_convert: down_write(gmem_rwsem)",
    }
    assert data["complete"] is True and data["states"] > 0


def test_random_and_seed():
    a = races("rfc-v2", "-t", "host_fault:0,convert_private:0,guest_fault:0", "--random", "100", "--seed", "3",
              "--json")
    b = races("rfc-v2", "-t", "host_fault:0,convert_private:0,guest_fault:0", "--random", "100", "--seed", "3",
              "--json")
    assert a.returncode == b.returncode == 1
    da, db = json.loads(a.stdout), json.loads(b.stdout)
    assert da["violation"]["trace"] == db["violation"]["trace"] and da["mode"].startswith("random")


def test_configs_and_mutations():
    out = races("linux-6.18", "--configs", "--json")
    assert out.returncode == 0
    assert len(json.loads(out.stdout)) == 8  # 7 documented configurations + 1 larger one
    out = races("linux-6.18", "--mutations", "--json")
    assert out.returncode == 0
    data = json.loads(out.stdout)
    verdicts = {m["site"]: m["detected"] for m in data["mutants"]}
    assert verdicts["guest_fault.mmu_lock"] is True and verdicts["punch_hole.invalidate_lock"] is False


def test_list():
    out = races("--list")
    assert out.returncode == 0
    for name in ("linux-6.18", "rfc-v2", "roth", "linux-7.4", "convert_roundtrip", "guest_fault",
                 "host_maps_private"):
        assert name in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("nope",),
        ("rfc-v2", "--threads", "teleport:0"),
        ("rfc-v2", "--threads", "host_fault:0-2"),
        ("rfc-v2", "--threads", "host_fault:-1"),
        ("rfc-v2", "--threads", ""),
        ("rfc-v2", "--init", "half"),
        ("rfc-v2", "--random", "0"),
        ("rfc-v2", "--random", "5", "--exhaustive"),
        ("rfc-v2", "--preemptions", "-1"),
        ("rfc-v2", "--mutations"),
        ("roth", "--sweep"),
        ("missing.py:X",),
    ],
)
def test_bad_input_is_one_line_exit_2(args):
    out = races(*args)
    assert out.returncode == 2, (args, out.stdout, out.stderr)
    assert out.stderr.startswith("gmemlab: error:")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_user_variant_from_file(tmp_path):
    src = tmp_path / "myvariant.py"
    src.write_text(textwrap.dedent("""
        from gmemlab.races import Protocol
        from gmemlab.races.paths import Locking
        from gmemlab.races.protocols import locking_paths

        # RFC2 plus the strict refcount check, but is_private under the lock
        MINE = Protocol("mine", "my variant", locking_paths(
            Locking(lookup_locked=True, strict_refcount=True)))
        NOT_A_PROTOCOL = 3
    """))
    out = races(f"{src}:MINE", "-t", "host_fault:0,convert_private:0,guest_fault:0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "protocol: mine" in out.stdout
    bad = races(f"{src}:NOT_A_PROTOCOL")
    assert bad.returncode == 2 and "no Protocol named" in bad.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    out = races(f"{broken}:X")
    assert out.returncode == 2 and "RuntimeError: boom" in out.stderr


@pytest.mark.parametrize("args", [
    ("linux-6.18", "--max-states", "10"),
    ("linux-6.18", "--preemptions", "0"),
    ("roth", "-t", "host_fault:0,convert_private:0,guest_fault:0", "--random", "5"),
])
def test_bounded_search_without_violation_is_incomplete_exit_3(args):
    out = races(*args)
    assert out.returncode == 3, (args, out.stdout, out.stderr)
    assert "INCOMPLETE" in out.stdout and "no property violated in the states explored" in out.stdout


def test_time_limit_stops_a_large_search_incomplete():
    out = races("linux-6.18", "-t", "guest_fault:0,host_fault:0,convert_private:0-1,convert_shared:0-1,"
                "punch_hole:0-1,guest_fault:1", "--time-limit", "1", "--json")
    assert out.returncode == 3, out.stderr
    data = json.loads(out.stdout)
    assert data["complete"] is False and data["stopped"] == "time limit" and data["seconds"] < 30


def test_progress_reports_states_as_it_goes():
    from gmemlab.races.explorer import explore
    from gmemlab.races.protocols import Setup, get_protocol, parse_threads

    proto = get_protocol("linux-6.18")
    seen: list[tuple[int, int, float]] = []
    setup = Setup(proto, parse_threads("guest_fault:0,host_fault:0,convert_private:0,convert_shared:0,"
                                       "punch_hole:0", proto), "private")
    result = explore(setup, progress=lambda *a: seen.append(a))
    assert result.complete and seen and all(a[0] <= result.states for a in seen)
    assert [a[0] for a in seen] == sorted(a[0] for a in seen)
