"""The differential fuzzer itself, on model pairs (no kernel needed): it finds and shrinks a planted
difference, and it replays sequences."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.conformance.fuzz import compare_sequence, fuzz, load_sequence
from gmemlab.model import HostConfig, ModelBackend


def test_identical_models_never_diverge() -> None:
    report = fuzz(lambda: ModelBackend(), lambda: ModelBackend(), examples=80, seed_value=3)
    assert report.sequences == 80 and report.divergence is None


def test_planted_difference_is_found_and_shrunk() -> None:
    other = HostConfig(nr_memslots=3)  # slot ids >= 3 refused
    report = fuzz(lambda: ModelBackend(), lambda: ModelBackend(config=other), examples=300, seed_value=1)
    div = report.divergence
    assert div is not None
    assert "set_user_memory_region2(3" in div.left or "set_user_memory_region2(4" in div.left
    assert len(div.ops) <= 5  # shrunk to a handful of operations
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
