"""The differential fuzzer itself, on model pairs (no kernel needed): it finds and shrinks a planted
difference, and it replays sequences."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.conformance.fuzz import compare_sequence, fuzz, load_sequence
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.uapi import VmType


def test_identical_models_never_diverge() -> None:
    report = fuzz(lambda: ModelBackend(), lambda: ModelBackend(), examples=80, seed_value=3)
    assert report.sequences == 80 and report.divergence is None


def test_planted_difference_is_found_and_shrunk() -> None:
    # A host offering only default VMs: sequences that create a VM of another type diverge at once.
    other = HostConfig.upstream().with_(vm_types=(VmType.DEFAULT,))
    report = fuzz(lambda: ModelBackend(), lambda: ModelBackend(config=other), examples=100, seed_value=1)
    div = report.divergence
    assert div is not None
    assert div.left.startswith("kvm1.vm_types() -> ok (<VmType.DEFAULT: 0>, <VmType.SW_PROTECTED: 1>")
    assert div.right == "kvm1.vm_types() -> ok (<VmType.DEFAULT: 0>,)"
    assert len(div.ops) <= 5 and div.ops[0]["op"] == "create_vm"  # shrunk to the prelude and one operation
    assert compare_sequence(lambda: ModelBackend(), lambda: ModelBackend(config=other), div.ops) is not None


@pytest.mark.parametrize("text,needle", [("[", "not JSON"), ("{}", "JSON list"), ('[{"op": "dance"}]', "unknown op"),
                                         ('[{"op": "create_gmem"}]', "missing"),
                                         ('[{"op": "unbind", "vm": "a", "slot": 1}]', "must be integers")])
def test_replay_input_errors_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        load_sequence(text)


def test_cli_fuzz_model_self_check_and_replay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    res = runner.invoke(app, ["fuzz", "--backend", "model", "--examples", "20", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["divergences"] == []
    seq = tmp_path / "seq.json"
    seq.write_text(json.dumps([{"op": "create_vm"}, {"op": "create_gmem", "vm": 0, "size": 4096, "flags": 3}]))
    res = runner.invoke(app, ["fuzz", "--backend", "model", "--replay", str(seq)])
    assert res.exit_code == 0 and "no divergence" in res.output
