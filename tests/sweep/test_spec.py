"""Sweep files: what they expand to, and bad files rejected with file, key and reason (exit 2, no traceback)."""

from __future__ import annotations

import pytest

from gmemlab.errors import UsageError
from gmemlab.sweep.spec import builtin_names, load_sweep
from gmemlab.sweep.tasks import expand

from .conftest import cli

GOOD = """
name = "study"
seeds = [3, 4]
[fixed]
set.runtime_s = 10
[grid]
scenario = ["snp-lazy-accept-64g", "pkvm-android-1g"]
policy = ["eager", "deferred"]
[[zip]]
set.guest_mem = ["1GiB", "2GiB"]
set.vcpus = [2, 4]
"""


def test_grid_zip_and_seeds_expand_in_file_order(sweep_file):
    spec = load_sweep(str(sweep_file(GOOD)))
    assert spec.runs == 2 * 2 * 2 * 2
    tasks = expand(spec)
    assert len(tasks) == 16
    first = tasks[0].inputs
    assert (first["scenario"], first["policy"], first["seed"]) == ("snp-lazy-accept-64g", "eager", 3)
    assert first["set.guest_mem"] == "1GiB" and first["set.vcpus"] == "2" and first["set.runtime_s"] == "10"
    assert first["params.guest_mem"] == 1 << 30 and first["params.vcpus"] == 2 and first["params.runtime_s"] == 10
    assert [t.inputs["seed"] for t in tasks[:2]] == [3, 4]  # seeds innermost
    # a zip group is one axis: guest_mem and vcpus move together
    pairs = {(t.inputs["params.guest_mem"], t.inputs["params.vcpus"]) for t in tasks}
    assert pairs == {(1 << 30, 2), (2 << 30, 4)}
    assert len({t.input_hash for t in tasks}) == 16


def test_input_hash_follows_resolved_inputs(sweep_file):
    """The same run spelled two ways has one hash; a different seed, override or cost weight another."""
    base = '[fixed]\nscenario = "non-coco-mmap-64g"\npolicy = "deferred"\n'
    one = expand(load_sweep(str(sweep_file(base + 'set.guest_mem = "1GiB"\n', "a.toml"))))[0]
    same = expand(load_sweep(str(sweep_file(base + "set.guest_mem = 1073741824\n", "b.toml"))))[0]
    assert one.input_hash == same.input_hash
    other_seed = expand(load_sweep(str(sweep_file("seeds = [1]\n" + base + 'set.guest_mem = "1GiB"\n', "c.toml"))))
    cost = expand(load_sweep(str(sweep_file(base + 'set.guest_mem = "1GiB"\ncost."6".weight = 1.0\n', "d.toml"))))
    bigger = expand(load_sweep(str(sweep_file(base + 'set.guest_mem = "2GiB"\n', "e.toml"))))
    hashes = {one.input_hash, other_seed[0].input_hash, cost[0].input_hash, bigger[0].input_hash}
    assert len(hashes) == 4
    assert cost[0].inputs["cost.6.weight"] == 1.0
    assert cost[0].inputs["cost_table.hash"] != one.inputs["cost_table.hash"]


def test_builtin_sweeps_expand():
    assert {"guest-size", "vcpus"} <= set(builtin_names())
    spec = load_sweep("guest-size")
    assert spec.runs == 9 * 2 * 3 * 5
    tasks = expand(spec)
    sizes = sorted({t.inputs["params.guest_mem"] for t in tasks})
    assert sizes[0] == 1 << 30 and sizes[-1] == 64 << 40
    assert {t.inputs["params.arch"] for t in tasks} == {"snp", "tdx", "none"}
    assert len(expand(load_sweep("vcpus"))) == load_sweep("vcpus").runs


BAD = [
    # (file text, key path named, words of the reason)
    ("seeds = 3\n[grid]\nscenario = [\"nope\"]\n", "grid.scenario[0]", "no built-in scenario"),
    ("[fixed]\nscenario = \"snp-lazy-accept-64\"\n", "fixed.scenario", "did you mean 'snp-lazy-accept-64g'"),
    ("[grid]\nscenario = [\"tdx-boot-64g\"]\npolicy = [\"eagre\"]\n", "grid.policy[0]", "did you mean 'eager'"),
    ("[grid]\nscenario = [\"tdx-boot-64g\"]\nset.guest_mem = [\"1GiB\", nan]\n", "grid.set.guest_mem[1]",
     "not a finite number"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\nset.runtime_churn.rate_per_s = inf\n",
     "fixed.set.runtime_churn.rate_per_s", "not a finite number"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\ncost.\"6\".weight = -inf\n", "fixed.cost.6.weight", "not a finite"),
    ("[grid]\nscenario = [\"tdx-boot-64g\"]\nset.guest_mem = [18446744073709551616]\n",
     "grid.set.guest_mem[0]", "64-bit"),
    ("seeds = 99999999999999999999\n[fixed]\nscenario = \"tdx-boot-64g\"\n", "seeds", "64-bit"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\nset.runtime_s = 1979-05-27\n", "fixed.set.runtime_s", "date or time"),
    ("seeds = 0\n[fixed]\nscenario = \"tdx-boot-64g\"\n", "seeds", "1..100000"),
    ("seeds = [1, 1]\n[fixed]\nscenario = \"tdx-boot-64g\"\n", "seeds", "listed twice"),
    ("seeds = [-1]\n[fixed]\nscenario = \"tdx-boot-64g\"\n", "seeds[0]", ">= 0"),
    ("sedes = 3\n[fixed]\nscenario = \"tdx-boot-64g\"\n", "sedes", "did you mean 'seeds'"),
    ("[grid]\nscenario = [\"tdx-boot-64g\"]\nseed = [1, 2]\n", "grid.seed", "top of the file"),
    ("[grid]\nscenarios = [\"tdx-boot-64g\"]\n", "grid.scenarios", "did you mean 'scenario'"),
    ("[grid]\npolicy = [\"eager\"]\n", "scenario", "missing"),
    ("[grid]\nscenario = \"tdx-boot-64g\"\n", "grid.scenario", "non-empty list"),
    ("[grid]\nscenario = []\n", "grid.scenario", "non-empty list"),
    ("[grid]\nscenario = [\"tdx-boot-64g\", \"tdx-boot-64g\"]\n", "grid.scenario[1]", "listed twice"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\n[grid]\nscenario = [\"tdx-boot-64g\"]\n", "grid.scenario",
     "already given at fixed.scenario"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\n[[zip]]\nset.vcpus = [1, 2]\npolicy = [\"eager\"]\n", "zip[0]",
     "one length"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\n[grid]\nset.guest_mme = [\"1GiB\"]\n", "grid.set.guest_mme[0]",
     "did you mean 'guest_mem'"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\n[grid]\nset.guest_mem = [\"1GiB\", \"3MiB\"]\n",
     "grid.set.guest_mem[1]", "multiple of"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\nset.accept.mode = \"sometimes\"\n", "fixed.set.accept.mode",
     "is not one of"),
    ("[fixed]\nscenario = \"non-coco-mmap-64g\"\n[grid]\nset.accept.mode = [\"none\", \"lazy\"]\n",
     "grid.set.accept.mode[1]", "has no memory acceptance"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\ncost.\"99\".weight = 1\n", "fixed.cost.99.weight", "no cost row"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\ncost.\"6m\".weight = 1\n", "fixed.cost.6m.weight", "informational"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\ncost.\"6\".wieght = 1\n", "fixed.cost.6.wieght", "did you mean"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\ncost.\"6\".weight = \"big\"\n", "fixed.cost.6.weight",
     "expected a number"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\nprofile = \"linux-9.9\"\n", "fixed.profile", "cannot be simulated"),
    ("name = \"../up\"\n[fixed]\nscenario = \"tdx-boot-64g\"\n", "name", "names a folder"),
    ("costs_file = \"missing.toml\"\n[fixed]\nscenario = \"tdx-boot-64g\"\n", "costs_file", "no such file"),
    ("[fixed]\nscenario = \"tdx-boot-64g\"\n[grid\n", "", "invalid TOML"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD, ids=[f"{b[1] or 'file'}-{i}" for i, b in enumerate(BAD)])
def test_bad_sweep_file_names_file_key_and_reason(sweep_file, text, key, reason):
    path = sweep_file(text)
    with pytest.raises(UsageError) as info:
        expand(load_sweep(str(path)))
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    if key:
        assert f": {key}" in message, message
    assert reason in message, message


def test_bad_combination_names_the_keys(sweep_file):
    """Lazy merging exists only for the deferred policy: the message names the override and the policy."""
    path = sweep_file('[fixed]\nscenario = "tdx-boot-64g"\nset.merge = "lazy"\n'
                      '[grid]\npolicy = ["deferred", "eager"]\n')
    with pytest.raises(UsageError) as info:
        expand(load_sweep(str(path)))
    message = str(info.value)
    assert message.startswith(f"{path}: fixed.set.merge: with scenario tdx-boot-64g, policy eager: "), message
    assert "lazy merging" in message


def test_bad_costs_file_is_the_simulators_error(sweep_file, tmp_path):
    (tmp_path / "costs.toml").write_text("[rows.6]\nweight = -1\n")
    path = sweep_file('costs_file = "costs.toml"\n[fixed]\nscenario = "tdx-boot-64g"\n')
    with pytest.raises(UsageError, match=r"costs\.toml: rows\.6\.weight: must be at least"):
        load_sweep(str(path))


def test_cli_bad_file_exit_2_one_line(sweep_file):
    path = sweep_file("[grid]\nscenario = [\"tdx-boot-64g\"]\nset.guest_mem = [\"1GiB\", nan]\n")
    result = cli("sweep", str(path), "--dry-run")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: grid.set.guest_mem[1]: nan is not a finite number" in lines[0]
    result = cli("sweep", "no-such-sweep")
    assert result.returncode == 2 and "no built-in sweep or file" in result.stderr and "Traceback" not in result.stderr
