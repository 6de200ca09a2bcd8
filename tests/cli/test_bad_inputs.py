"""Bad input, across every command and the Python API (issue 13's "done when").

Each case runs in a fresh folder that already holds output files of every kind a command writes (a plot in
each format, a saved sequence, a JUnit report, an exported scenario, a results folder) and shows:

* the documented exit status (2: bad usage or input) and no traceback anywhere;
* one line on stderr, ``gmemlab: error: ...``, naming the input (the option, file, key or value at fault);
* no output file damaged: every file present before is byte-identical after, and no file appeared.

Commands run in-process through the typer app (the root command class gives them the same exit status and
error line as the console script); a few run as real subprocesses to show the same from the outside.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app

runner = CliRunner()

# Output files that exist before every case; none may change.
PROTECTED: dict[str, bytes] = {
    "out.png": b"\x89PNG\r\n\x1a\n previous plot",
    "out.svg": b"<svg>previous</svg>",
    "out.pdf": b"%PDF-1.4 previous",
    "fuzz-failure.json": b'{"previous": "sequence"}',
    "report.xml": b"<testsuites previous/>",
    "mine.toml": b"# previous export\n",
    "ref.md": b"previous reference\n",
}

NAN_SCENARIO = 'name = "nan"\narch = "snp"\n[runtime_churn]\nrate_per_s = nan\n'
INPUTS: dict[str, str | bytes] = {
    "nan.toml": NAN_SCENARIO,
    "inf.toml": 'arch = "snp"\n[guest_touch]\nfraction_of_mem = inf\n',
    "huge.toml": "guest_mem = 18446744073709551616\n",
    "bad.toml": "guest_mem = = 1\n",
    "unknown.toml": "guest_mme = \"1GiB\"\n",
    "latin1.toml": "name = \"caf\xe9\"\n".encode("latin-1"),
    "markup.toml": 'name = "[/]"\nvcpus = 0\n',
    "costs-nan.toml": "[rows.6]\nweight = nan\n",
    "costs-inf.toml": "[rows.6]\nper_vcpu = inf\n",
    "costs-neg.toml": "[rows.6]\nweight = -1\n",
    "costs-row.toml": "[rows.66]\nweight = 1\n",
    "costs-bad.toml": "[rows.6\n",
    "costs-key.toml": "[rows.6]\nwieght = 1\n",
    "sweep-nan.toml": 'name = "s"\n[grid]\nscenario = ["churn-pingpong"]\nset.runtime_s = [nan]\n',
    "sweep-big.toml": 'name = "s"\nseeds = 99999999999999999999\n[grid]\nscenario = ["churn-pingpong"]\n',
    "sweep-bad.toml": 'name = "s"\n[grid\n',
    "sweep-key.toml": 'name = "s"\n[gird]\nscenario = ["churn-pingpong"]\n',
    "sweep-set.toml": 'name = "s"\n[grid]\nscenario = ["churn-pingpong"]\nset.vcpu = [1, 2]\n',
    "sweep-arch.toml": 'name = "s"\n[grid]\nscenario = ["churn-pingpong"]\nset.arch_limits.map_gpa_chunk = ["64MiB"]\n',
    "sweep-inf.toml": 'name = "s"\n[grid]\nscenario = ["churn-pingpong"]\ncost."6".weight = [inf]\n',
    "replay-nan.json": '[{"op": "create_vm", "type": NaN}]',
    "replay-op.json": '[{"op": "dance"}]',
    "replay-list.json": '[{"op": ["create_vm"]}]',
    "replay-json.json": "[",
    "replay-field.json": '[{"op": "create_vm"}]',
    "replay-format.json": '{"format": "something-else", "ops": []}',
    "replay-digits.json": '[{"op": "create_vm", "type": ' + "9" * 5000 + "}]",
    "proto.py": "X = 3\n",
    "record.md": "nothing here\n",
}


@dataclass
class Bad:
    argv: list[str]
    needle: str  # the message names this (the option, file, key or value)
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)


def cases() -> list[Any]:
    out: list[Any] = []

    def add(name: str, argv: list[str], needle: str, **kw: Any) -> None:
        out.append(pytest.param(Bad(argv, needle, **kw), id=name))

    # --- run / compare: --set, scenario files, --costs, --plot, options -------------------------------------
    sets = [
        ("rate-inf", "runtime_churn.rate_per_s=inf", "runtime_churn.rate_per_s: must be a finite number"),
        ("rate-nan", "runtime_churn.rate_per_s=nan", "runtime_churn.rate_per_s: must be a finite number"),
        ("touch-nan", "guest_touch.fraction_of_mem=nan", "guest_touch.fraction_of_mem"),
        ("host-frac-nan", "host_access.touched_fraction=nan", "host_access.touched_fraction"),
        ("pre-watermark-inf", "accept.pre_watermark.per_vcpu=inf", "accept.pre_watermark.per_vcpu"),
        ("renamed-key", "accept.pre_watermark_storm.per_vcpu=1", "did you mean 'pre_watermark'"),
        ("size-dist-nan", 'runtime_churn.size_dist={"4KiB"=nan}', "runtime_churn.size_dist"),
        ("guest-mem-2^64", "guest_mem=18446744073709551616", "guest_mem: must be at most"),
        ("guest-mem-neg", "guest_mem=-1", "guest_mem"),
        ("guest-mem-GB", "guest_mem=64GB", "did you mean GiB"),
        ("guest-mem-unit", "guest_mem=4PiB", "unknown unit 'PiB'"),
        ("vcpus-0", "vcpus=0", "vcpus: must be at least 1"),
        ("vcpus-float", "vcpus=1e3", "vcpus: expected an integer"),
        ("runtime-2^70", "runtime_s=1180591620717411303424", "runtime_s"),
        ("pool-frac-nan", "host_access.pins.fraction=nan", "host_access.pins.fraction"),
        ("used-at-boot-nan", "accept.used_at_boot=nan", "accept.used_at_boot: a fraction of guest memory"),
        ("unknown-key", "guest_mme=1GiB", "did you mean 'guest_mem'"),
        ("no-equals", "guest_mem", "expected KEY=VALUE"),
        ("empty-key", "=1", "expected KEY=VALUE"),
        ("bad-choice", "accept.mode=eagr", "did you mean 'eager'"),
        ("inside-value", "vcpus.x=1", "vcpus"),
        # a key of another arch (churn-pingpong is SNP), and a value SNP cannot have
        ("tdx-only-key", 'accept.guest_try_levels=["4K"]', "accept.guest_try_levels: TDX-only: tdx_accept_memory"),
        ("snp-1g-private", "arch_limits.private_max_level=1G", "SNP private mappings are at most 2M"),
        ("level-not-auto", "arch_limits.private_max_level=Auto", "not a mapping level (4K, 2M or 1G, or \"auto\")"),
    ]
    for name, text, needle in sets:
        add(f"run-set-{name}", ["run", "churn-pingpong", "--set", text, "--plot", "out.png"], needle)
    add("compare-set-nan", ["compare", "churn-pingpong", "--set", "runtime_churn.rate_per_s=nan"], "rate_per_s")
    add("describe-set-inf", ["scenarios", "describe", "churn-pingpong", "--set", "runtime_churn.rate_per_s=inf"],
        "rate_per_s")
    add("events-set-nan", ["scenarios", "events", "churn-pingpong", "--set", "guest_touch.fraction_of_mem=nan"],
        "fraction_of_mem")
    for name, needle in [("nan.toml", "nan.toml: runtime_churn.rate_per_s: must be a finite number"),
                         ("inf.toml", "inf.toml: guest_touch.fraction_of_mem"),
                         ("huge.toml", "huge.toml: guest_mem"), ("bad.toml", "bad.toml: invalid TOML"),
                         ("unknown.toml", "did you mean 'guest_mem'"), ("latin1.toml", "latin1.toml: cannot read"),
                         ("markup.toml", "vcpus: must be at least 1")]:
        add(f"run-file-{name}", ["run", name, "--plot", "out.svg"], needle)
    add("describe-file-nan", ["scenarios", "describe", "nan.toml"], "nan.toml")
    add("compare-file-huge", ["compare", "huge.toml", "--plot", "out.pdf"], "huge.toml")
    add("run-unknown-scenario", ["run", "snp-lazy-acept-64g"], "did you mean 'snp-lazy-accept-64g'")
    add("run-scenario-folder", ["run", "."], ".: is a folder, not a scenario file")
    add("run-scenario-device", ["run", os.devnull], f"{os.devnull}: is not a regular file")
    add("compare-scenario-folder", ["compare", "."], "is a folder")
    add("describe-scenario-folder", ["scenarios", "describe", "."], "is a folder")
    add("sensitivity-scenario-folder", ["sensitivity", "."], "is a folder")
    add("run-markup-name", ["run", "[/]"], "[/]: no built-in scenario or file")
    for name, needle in [("costs-nan.toml", "rows.6.weight: must be a finite number"),
                         ("costs-inf.toml", "rows.6.per_vcpu: must be a finite number"),
                         ("costs-neg.toml", "rows.6.weight: must be at least 0"),
                         ("costs-row.toml", "rows.66: no such cost row"), ("costs-bad.toml", "invalid TOML"),
                         ("costs-key.toml", "did you mean 'weight'"), ("missing.toml", "missing.toml")]:
        add(f"run-{name}", ["run", "churn-pingpong", "--costs", name, "--plot", "out.png"], needle)
    for name, plot, needle in [("empty", "", "--plot '': an empty file name"),
                               ("bmp", "out.bmp", "extension .bmp"), ("noext", "out", "no extension"),
                               ("folder", ".", "is a directory"),
                               ("missing-folder", "nowhere/out.png", "does not exist"),
                               ("proc", "/proc/out.png", "cannot write in folder '/proc'")]:
        add(f"run-plot-{name}", ["run", "churn-pingpong", "--plot", plot], needle)
        add(f"compare-plot-{name}", ["compare", "churn-pingpong", "--plot", plot], needle)
    add("run-policy", ["run", "churn-pingpong", "--policy", "eagr", "--plot", "out.png"], "did you mean 'eager'")
    add("compare-policy-twice", ["compare", "churn-pingpong", "--policy", "eager", "--policy", "eager"],
        "given more than once")
    add("run-seed-text", ["run", "churn-pingpong", "--seed", "abc"], "--seed 'abc'")
    add("run-seed-neg", ["run", "churn-pingpong", "--seed", "-1"], "--seed")
    add("run-seed-2^64", ["run", "churn-pingpong", "--seed", str(1 << 64)], "--seed")
    add("run-time-nan", ["run", "churn-pingpong", "--time-limit", "nan"], "--time-limit nan")
    add("run-time-zero", ["run", "churn-pingpong", "--time-limit", "0"], "--time-limit 0")
    add("run-unknown-option", ["run", "churn-pingpong", "--sed", "1"], "--sed")
    add("run-no-scenario", ["run"], "scenario")

    # --- sensitivity, validate -------------------------------------------------------------------------------
    two = ["--policy", "eager", "--policy", "deferred"]
    for name, argv, needle in [
        ("one-policy", ["churn-pingpong", "--policy", "eager"], "exactly two policies"),
        ("policy", ["churn-pingpong", "--policy", "eager", "--policy", "defered"], "did you mean 'deferred'"),
        ("min-nan", ["churn-pingpong", *two, "--min", "nan"], "--min nan"),
        ("max-inf", ["churn-pingpong", *two, "--max", "inf"], "--max inf"),
        ("min-above-max", ["churn-pingpong", *two, "--min", "5", "--max", "2"], "0 < min < max"),
        ("top-0", ["churn-pingpong", *two, "--top", "0"], "--top"),
        ("plot-empty", ["churn-pingpong", *two, "--plot", ""], "--plot ''"),
        ("plot-ext", ["churn-pingpong", *two, "--plot", "out.jpeg"], "extension .jpeg"),
        ("set-nan", ["churn-pingpong", *two, "--set", "runtime_churn.rate_per_s=nan"], "rate_per_s"),
        ("scenario", ["churn-pingpog", *two], "did you mean 'churn-pingpong'"),
    ]:
        add(f"sensitivity-{name}", ["sensitivity", *argv], needle)
    add("validate-costs-nan", ["validate", "--costs", "costs-nan.toml"], "rows.6.weight: must be a finite number")
    add("validate-costs-missing", ["validate", "--costs", "missing.toml"], "missing.toml")

    # --- scenarios ----------------------------------------------------------------------------------------------
    add("scenarios-unknown-command", ["scenarios", "lst"], "'lst'")
    add("scenarios-describe-unknown", ["scenarios", "describe", "tdx-bot-64g"], "did you mean 'tdx-boot-64g'")
    add("scenarios-events-limit", ["scenarios", "events", "churn-pingpong", "--limit", "-1"], "--limit")
    add("scenarios-events-seed", ["scenarios", "events", "churn-pingpong", "--seed", "x"], "--seed 'x'")
    add("scenarios-export-unknown", ["scenarios", "export", "nope"], "'nope': unknown built-in scenario")
    add("scenarios-export-exists", ["scenarios", "export", "churn-pingpong", "--out", "mine.toml"], "--force")
    add("scenarios-export-empty", ["scenarios", "export", "churn-pingpong", "--out", ""], "--out")
    add("scenarios-reference-folder", ["scenarios", "reference", "--out", "nowhere/ref.md"], "does not exist")

    # --- races ------------------------------------------------------------------------------------------------------
    for name, argv, needle in [
        ("protocol", ["linux-6.81"], "did you mean 'linux-6.18'"),
        ("path", ["linux-6.18", "-t", "guest_falt:0"], "did you mean 'guest_fault'"),
        ("index", ["linux-6.18", "-t", "guest_fault:x"], "bad index 'x'"),
        ("index-neg", ["linux-6.18", "-t", "guest_fault:-1"], "guest_fault:-1"),
        ("index-huge", ["linux-6.18", "-t", "guest_fault:99999999999999999999"], "99999999999999999999"),
        ("range-single", ["linux-6.18", "-t", "host_fault:0-2"], "host_fault"),
        ("threads-empty", ["linux-6.18", "-t", ""], "--threads"),
        ("too-many", ["linux-6.18", "-t", ",".join(["guest_fault:0"] * 9)], "at most 8"),
        ("init", ["linux-6.18", "--init", "sharde"], "did you mean 'shared'"),
        ("max-states-0", ["linux-6.18", "--max-states", "0"], "--max-states"),
        ("max-states-text", ["linux-6.18", "--max-states", "abc"], "--max-states 'abc'"),
        ("random-0", ["linux-6.18", "--random", "0"], "--random"),
        ("preemptions-neg", ["linux-6.18", "--preemptions", "-1"], "--preemptions"),
        ("exclusive", ["linux-6.18", "--random", "3", "--exhaustive"], "mutually exclusive"),
        ("sweep-alone", ["roth", "--sweep"], "--sweep"),
        ("time-nan", ["linux-6.18", "--time-limit", "nan"], "--time-limit nan"),
        ("time-inf", ["linux-6.18", "--time-limit", "inf"], "--time-limit inf"),
        ("time-neg", ["linux-6.18", "--time-limit", "-1"], "--time-limit -1"),
        ("mutations-threads", ["linux-6.18", "--mutations", "-t", "guest_fault:0"], "--mutations"),
        ("file-missing", ["nowhere.py:X"], "nowhere.py"),
        ("file-no-protocol", ["proto.py:X"], "no Protocol named 'X'"),
        ("seed-huge", ["linux-6.18", "--seed", str(1 << 70)], "--seed"),
    ]:
        add(f"races-{name}", ["races", *argv], needle)

    # --- conformance, oracle, profiles --------------------------------------------------------------------------
    for name, argv, needle in [
        ("profile", ["--profile", "linux-6.81"], "did you mean 'linux-6.18'"),
        ("backend", ["--backend", "qemu"], "--backend 'qemu'"),
        ("param", ["--param", "x"], "--param 'x'"),
        ("param-value", ["--param", "kvm.gmem_in_place_conversion=maybe"], "Y or N"),
        ("json-tap", ["--json", "--tap"], "exclusive"),
        ("select", ["-k", "no-such-case"], "-k 'no-such-case'"),
        ("profile-without-cases", ["--backend", "model", "--profile", "linux-7.4-v8"], "gmemlab oracle --column B"),
        ("select-typo", ["-k", "test_falocate"], "did you mean 'test_fallocate'"),
        ("junit-empty", ["--junit", "", "-k", "test_file_size"], "--junit"),
        ("junit-folder", ["--junit", "nowhere/r.xml", "-k", "test_file_size"], "does not exist"),
        ("junit-ext-ok-bad-profile", ["--junit", "report.xml", "--profile", "x"], "--profile 'x'"),
        ("kernel", ["--kernel", "no-such-bzImage"], "--kernel no-such-bzImage"),
        ("kernel-folder", ["--kernel", "."], "--kernel .: is a folder"),
    ]:
        add(f"conformance-{name}", ["conformance", *argv], needle)
    add("oracle-column", ["oracle", "--column", "Q"], "--column 'Q'")
    add("oracle-record-latin1", ["oracle", "--record", "latin1.toml"], "--record latin1.toml: not UTF-8 text")
    add("oracle-select", ["oracle", "--column", "A", "-k", "no-such-row"], "-k 'no-such-row': no row id")
    add("oracle-record", ["oracle", "--record", "record.md"], "no table rows")
    add("oracle-backend", ["oracle", "--backend", "x"], "--backend 'x'")
    add("profiles-name", ["profiles", "linux-7.3x"], "did you mean 'linux-7.3'")
    add("profiles-env", ["profiles"], "two-fifty", env={"GMEMLAB_KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES": "two-fifty"})

    # --- fuzz -------------------------------------------------------------------------------------------------------
    for name, argv, needle in [
        ("backend", ["--backend", "modl"], "did you mean 'model'"),
        ("profile", ["--backend", "model", "--profile", "linux-6.81"], "did you mean 'linux-6.18'"),
        ("examples-0", ["--examples", "0"], "--examples"),
        ("examples-huge", ["--examples", str(10**12)], "--examples"),
        ("max-ops-0", ["--max-ops", "0"], "--max-ops"),
        ("seed-neg", ["--seed", "-5"], "--seed"),
        ("save-empty", ["--backend", "model", "--save", ""], "--save '': an empty file name"),
        ("save-folder", ["--backend", "model", "--save", "nowhere/f.json"], "does not exist"),
        ("replay-missing", ["--backend", "model", "--replay", "missing.json"], "missing.json"),
        ("replay-nan", ["--backend", "model", "--replay", "replay-nan.json"], "type must be an integer"),
        ("replay-op", ["--backend", "model", "--replay", "replay-op.json"], "unknown op 'dance'"),
        ("replay-list", ["--backend", "model", "--replay", "replay-list.json"], "unknown op"),
        ("replay-json", ["--backend", "model", "--replay", "replay-json.json"], "not JSON"),
        ("replay-field", ["--backend", "model", "--replay", "replay-field.json"], "missing type"),
        ("replay-format", ["--backend", "model", "--replay", "replay-format.json"], "format"),
        ("replay-digits", ["--backend", "model", "--replay", "replay-digits.json"], "replay-digits.json"),
    ]:
        add(f"fuzz-{name}", ["fuzz", *argv], needle)

    # --- vm ----------------------------------------------------------------------------------------------------------
    for name, argv, needle in [
        ("kernel", ["--kernel", "no-such-bzImage", "--", "true"], "--kernel no-such-bzImage"),
        ("kernel-folder", ["--kernel", ".", "--", "true"], "--kernel .: is a folder"),
        ("kernel-device", ["--kernel", os.devnull, "--", "true"], "is not a regular file"),
        ("timeout-nan", ["--kernel", "proto.py", "--timeout", "nan", "--", "true"], "--timeout nan"),
        ("timeout-inf", ["--kernel", "proto.py", "--timeout", "inf", "--", "true"], "--timeout inf"),
        ("boot-timeout", ["--kernel", "proto.py", "--boot-timeout", "-3", "--", "true"], "--boot-timeout"),
        ("memory", ["--kernel", "proto.py", "--memory", "1", "--", "true"], "--memory 1"),
        ("cpus", ["--kernel", "proto.py", "--cpus", "100000", "--", "true"], "--cpus 100000"),
        ("accel", ["--kernel", "proto.py", "--accel", "hvf", "--", "true"], "--accel 'hvf'"),
        ("no-command", ["--kernel", "proto.py"], "command"),
    ]:
        add(f"vm-{name}", ["vm", *argv], needle)

    # --- sweep, results -------------------------------------------------------------------------------------------
    for name, argv, needle in [
        ("unknown", ["guest-sise"], "did you mean 'guest-size'"),
        ("nan", ["sweep-nan.toml", "--dry-run"], "grid.set.runtime_s[0]: nan is not a finite number"),
        ("inf-cost", ["sweep-inf.toml", "--dry-run"], "sweep-inf.toml"),
        ("big", ["sweep-big.toml", "--dry-run"], "seeds"),
        ("bad", ["sweep-bad.toml", "--dry-run"], "sweep-bad.toml"),
        ("key", ["sweep-key.toml", "--dry-run"], "gird"),
        ("set", ["sweep-set.toml", "--dry-run"], "vcpu"),
        ("arch-key", ["sweep-arch.toml", "--dry-run"], "arch_limits.map_gpa_chunk: TDX-only"),
        ("workers-0", ["guest-size", "--workers", "0"], "--workers"),
        ("workers-huge", ["guest-size", "--workers", str(10**9)], "--workers"),
        ("list-and-name", ["--list", "guest-size"], "--list"),
        ("dask-and-scheduler", ["guest-size", "--dask", "--scheduler", "tcp://x:1"], "--scheduler"),
        ("nothing", [], "SWEEP"),
        ("folder", ["."], ".: is a folder, not a sweep file"),
        ("out-file", ["guest-size", "--out", "mine.toml"], "--out mine.toml: exists and is not a folder"),
        ("workers-short", ["guest-size", "-j", "0"], "--workers '0'"),
    ]:
        add(f"sweep-{name}", ["sweep", *argv], needle)
    for name, argv, needle in [
        ("missing", ["nowhere"], "nowhere"),
        ("sql", ["{results}", "--sql", "SELEC 1"], "SELEC"),
        ("column", ["{results}", "--sql", "SELECT no_such_column FROM runs"], "no_such_column"),
        ("plot-gif", ["{results}", "--plot", "out.gif", "--x", "guest_mem", "--y", "guest_faults"], ".gif"),
        ("plot-empty", ["{results}", "--plot", "", "--x", "guest_mem", "--y", "guest_faults"], "--plot ''"),
        ("plot-x", ["{results}", "--plot", "out.png", "--x", "nope", "--y", "guest_faults"], "nope"),
        ("plot-no-y", ["{results}", "--plot", "out.png", "--x", "guest_mem"], "--y"),
        ("json-csv", ["{results}", "--sql", "SELECT 1", "--json", "--csv"], "--csv"),
        ("x-without-plot", ["{results}", "--x", "guest_mem"], "--plot"),
        ("sql-as-argument", ["{results}", "SELECT 1"], "a query goes after --sql"),
    ]:
        add(f"results-{name}", ["results", *argv], needle)

    # --- the root command -------------------------------------------------------------------------------------
    add("root-unknown-command", ["simulate"], "simulate")
    add("root-unknown-option", ["--verbose"], "--verbose")
    return out


CASES = cases()


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-run results folder (``gmemlab results`` input)."""
    from gmemlab.sweep.dataset import Dataset
    from gmemlab.sweep.executors import SerialExecutor
    from gmemlab.sweep.runner import run_tasks
    from gmemlab.sweep.spec import parse_sweep
    from gmemlab.sweep.tasks import expand

    out = tmp_path_factory.mktemp("results")
    text = 'seeds = 1\n[fixed]\nscenario = "non-coco-mmap-64g"\npolicy = "deferred"\nset.guest_mem = "1GiB"\n'
    with Dataset(out) as ds:
        run_tasks(expand(parse_sweep(text, "one.toml", "one", None)), SerialExecutor(), dataset=ds)
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bad", CASES)
def test_bad_input(bad: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, results_folder: Path) -> None:
    for name, data in {**PROTECTED, **INPUTS}.items():
        (tmp_path / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    monkeypatch.chdir(tmp_path)
    for key, value in bad.env.items():
        monkeypatch.setenv(key, value)
    argv = [a.replace("{results}", str(results_folder)) for a in bad.argv]
    before = _snapshot(tmp_path)
    res = runner.invoke(app, argv, env={"COLUMNS": "80"})
    assert res.exit_code == bad.code, (argv, res.output)
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmemlab: error: "), (argv, res.stderr)
    assert bad.needle in lines[0], (argv, lines[0])
    assert _snapshot(tmp_path) == before, "an output file changed or appeared"


# --- the Python API --------------------------------------------------------------------------------------------


def _api_cases() -> list[Any]:
    from gmemlab.errors import KvmError, UnrepresentableArgument, UsageError

    def scenario(text: str) -> Callable[[], object]:
        from gmemlab.workload.scenario import parse_scenario

        return lambda: parse_scenario(text, "api.toml")

    def backend_call(fn: Callable[[Any, Any], object]) -> Callable[[], object]:
        def call() -> object:
            from gmemlab.model import ModelBackend

            system = ModelBackend()
            vm = system.create_vm(0)
            return fn(vm, vm.create_guest_memfd(1 << 21, 0))

        return call

    def explore(**kw: Any) -> Callable[[], object]:
        def call() -> object:
            from gmemlab.races.explorer import explore as run
            from gmemlab.races.protocols import Setup, get_protocol, parse_threads

            proto = get_protocol("linux-6.18")
            return run(Setup(proto, parse_threads("guest_fault:0", proto), "private"), **kw)

        return call

    def sim(**kw: Any) -> Callable[[], object]:
        def call() -> object:
            from gmemlab.sim.run import simulate

            return simulate("churn-pingpong", **kw)

        return call

    def task(overrides: tuple[tuple[str, object], ...]) -> Callable[[], object]:
        def call() -> object:
            from gmemlab.sweep.adapter import scenario_ref
            from gmemlab.sweep.tasks import make_task

            return make_task(scenario_ref("churn-pingpong"), "eager", "", 0, overrides=overrides)

        return call

    def sequence(text: str) -> Callable[[], object]:
        from gmemlab.conformance.fuzz import load_sequence

        return lambda: load_sequence(text)

    def check(value: object, **kw: Any) -> Callable[[], object]:
        from gmemlab.checks import check_number

        return lambda: check_number(value, **kw)

    def size(value: object) -> Callable[[], object]:
        from gmemlab.workload.units import parse_size

        return lambda: parse_size(value)

    items: list[tuple[str, Callable[[], object], type[BaseException], str]] = [
        ("scenario-nan", scenario(NAN_SCENARIO), UsageError, "api.toml: runtime_churn.rate_per_s"),
        ("scenario-inf-fraction", scenario('arch = "snp"\n[guest_touch]\nfraction_of_mem = -inf\n'), UsageError,
         "guest_touch.fraction_of_mem"),
        ("scenario-2^64", scenario("guest_mem = 18446744073709551616\n"), UsageError, "api.toml: guest_mem"),
        ("scenario-set-nan", lambda: _load("churn-pingpong", ["runtime_churn.rate_per_s=nan"]), UsageError,
         "--set runtime_churn.rate_per_s=nan"),
        ("scenario-unknown", lambda: _load("tdx-bot-64g", []), UsageError, "did you mean 'tdx-boot-64g'"),
        ("costs-nan", lambda: _costs("[rows.6]\nweight = nan\n"), UsageError, "rows.6.weight"),
        ("simulate-policy", sim(policy="eagr"), UsageError, "did you mean 'eager'"),
        ("simulate-set-inf", sim(overrides=["runtime_churn.rate_per_s=inf"]), UsageError, "rate_per_s"),
        ("simulate-seed-nan", sim(seed=math.nan), UsageError, "seed: must be a finite number"),
        ("simulate-seed-neg", sim(seed=-1), UsageError, "seed: must be at least 0"),
        ("simulate-seed-text", sim(seed="7"), UsageError, "seed: expected an integer"),
        ("sweep-task-nan", task((("runtime_churn.rate_per_s", math.nan),)), UsageError, "rate_per_s"),
        ("races-max-states", explore(max_states=0), UsageError, "max_states"),
        ("races-random-float", explore(random_runs=2.5), UsageError, "random_runs"),
        ("races-time-nan", explore(time_limit=math.nan), UsageError, "time_limit"),
        ("races-time-zero", explore(time_limit=0), UsageError, "time_limit"),
        ("model-size-nan", backend_call(lambda vm, g: vm.create_guest_memfd(math.nan, 0)), UnrepresentableArgument,
         "size"),
        ("model-size-2^64", backend_call(lambda vm, g: vm.create_guest_memfd(1 << 64, 0)), UnrepresentableArgument,
         "size"),
        ("model-fallocate-inf", backend_call(lambda vm, g: g.fallocate(0, math.inf, 4096)), UnrepresentableArgument,
         "offset"),
        ("model-fallocate-huge", backend_call(lambda vm, g: g.fallocate(0, 0, 1 << 70)), UnrepresentableArgument,
         "len"),
        ("model-mmap-unaligned", backend_call(lambda vm, g: g.mmap(4096, 1)), KvmError, "offset"),
        ("replay-nan", sequence('[{"op": "create_vm", "type": NaN}]'), ValueError, "type must be an integer"),
        ("replay-op-list", sequence('[{"op": ["x"]}]'), ValueError, "unknown op"),
        ("check-nan", check(math.nan), ValueError, "finite"),
        ("check-2^64", check(1 << 64, integer=True), ValueError, "64 bits"),
        ("size-nan", size(math.nan), ValueError, "expected a size"),
        ("size-text", size("lots"), ValueError, "not a size"),
    ]
    return [pytest.param(fn, exc, needle, id=name) for name, fn, exc, needle in items]


def _load(name: str, sets: list[str]) -> object:
    from gmemlab.workload.scenario import load_scenario

    return load_scenario(name, sets)


def _costs(text: str) -> object:
    import tempfile

    from gmemlab.sim.costs import load_cost_table

    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        return load_cost_table(f.name)


API_CASES = _api_cases()


@pytest.mark.parametrize(("call", "exc", "needle"), API_CASES)
def test_python_api_refuses(call: Callable[[], object], exc: type[BaseException], needle: str) -> None:
    with pytest.raises(exc) as info:
        call()
    assert needle in str(info.value)


def test_output_files_survive_a_failed_write(tmp_path: Path) -> None:
    """The writer every command uses: an exception while writing leaves the old file byte-identical."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gmemlab.output import save_figure

    target = tmp_path / "out.png"
    target.write_bytes(PROTECTED["out.png"])
    fig = plt.figure()

    class Broken:
        def savefig(self, f: object, **kw: object) -> None:
            fig.savefig(f, **kw)  # a real, partly written file ...
            raise OSError(28, "No space left on device")  # ... then the disk fills up

    try:
        with pytest.raises(Exception, match="No space left on device"):
            save_figure(Broken(), target)
    finally:
        plt.close(fig)
    assert target.read_bytes() == PROTECTED["out.png"] and os.listdir(tmp_path) == ["out.png"]


# --- a few as real processes: the console script's exit status and stderr ---------------------------------------

SUBPROCESS = [
    (["run", "churn-pingpong", "--set", "runtime_churn.rate_per_s=nan"], "rate_per_s"),
    (["conformance", "--backend", "qemu"], "qemu"),
    (["races", "linux-6.81"], "linux-6.18"),
    (["run", "churn-pingpong", "--plot", ""], "--plot ''"),
]


@pytest.mark.parametrize(("argv", "needle"), SUBPROCESS, ids=[" ".join(a[:2]) for a, _ in SUBPROCESS])
def test_console_script_exit_status_and_one_line(argv: list[str], needle: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gmemlab", *argv], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr and not os.listdir(tmp_path)


def test_enough_bad_inputs() -> None:
    commands = {c.values[0].argv[0] for c in CASES}
    assert len(CASES) + len(API_CASES) >= 100
    assert commands >= {"run", "compare", "scenarios", "races", "conformance", "oracle", "profiles", "fuzz", "vm",
                        "sweep", "results", "sensitivity", "validate"}
