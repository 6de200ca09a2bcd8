"""``gmemlab scenarios`` through the CLI (registered at import of gmemlab.cli)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from gmemlab.cli import app

from .test_scenario import BUILTINS

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["scenarios", *args], env={"COLUMNS": "200"})


def test_list():
    result = invoke()
    assert result.exit_code == 0, result.output
    for name in BUILTINS:
        assert name in result.output
    assert "SEV-SNP 64 GiB" in result.output


def test_describe_shows_parameters_and_derived_counts():
    result = invoke("describe", "snp-lazy-accept-64g")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "accept.chunk" in out and "4MiB" in out and "shared_regions.swiotlb.size" in out
    assert "15,872" in out  # lazy 4 MiB steps: (64 GiB - 2 GiB accepted by OVMF) / 4 MiB
    assert "15,872 / 15,872" in out  # PSC VMGEXITs / exits for the full accept
    assert "1GiB" in out and "rule swiotlb" in out and "MSR-protocol exits" in out
    assert "16,777,216 xarray stores" in out


def test_describe_with_set_and_tdx_exits():
    out = invoke("describe", "tdx-boot-64g", "--set", "guest_mem=1GiB").output
    assert "64MiB" in out and "MapGPA userspace exits" in out and "32" in out
    out = invoke("describe", "tdx-boot-64g").output
    assert "512" in out


def test_describe_user_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('arch = "pkvm"\nguest_mem = "256MiB"\n[backing]\nallocator = "buddy_thp"\npage = "2M"\n'
                    '[shared_regions.swiotlb]\nsize = "64MiB"\n')
    result = invoke("describe", str(path))
    assert result.exit_code == 0, result.output
    assert "16,384" in result.output  # MEM_SHARE hypercalls


def test_events_limit_and_counts():
    result = invoke("events", "tdx-boot-64g", "--set", "guest_mem=1GiB", "--limit", "5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["0", "PhaseMark", "phase=launch", "cpus=1"]
    assert lines[4].split()[1] == "Populate" and not lines[5].strip()[0].isdigit()
    assert "Accept" in result.output and "total" in result.output and "userspace exits" in result.output


def test_bad_input_is_a_usage_error():
    result = invoke("describe", "snp-lazy-accept-64g", "--set", "vcpus=0")
    assert result.exit_code == 2
    assert result.stderr == "gmemlab: error: --set vcpus=0: vcpus: must be at least 1, got 0\n"
    result = invoke("events", "no-such-scenario")
    assert result.exit_code == 2 and "no-such-scenario" in result.stderr


def test_main_prints_one_line_and_exits_2():
    proc = subprocess.run(
        [sys.executable, "-c", "from gmemlab.cli import main; main()", "scenarios", "describe", "tdx-boot-64g",
         "--set", "accept.mode=eagr"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "gmemlab: error: --set accept.mode=eagr: accept.mode: 'eagr' is not one of lazy, eager, none "
        "(did you mean 'eager'?)"
    )
