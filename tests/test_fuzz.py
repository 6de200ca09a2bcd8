"""The lockstep fuzzer on model pairs (no kernel needed): planted differences, exceptions, broken invariants
and gaps are found and shrunk; replay files are checked; the CLI's exit codes say what happened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.conformance.fuzz import DEFAULT_EXAMPLES, compare_sequence, dump_sequence, fuzz, load_sequence
from gmemlab.conformance.fuzz_ops import OPS
from gmemlab.errors import UnsupportedByBackend
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.model.host import ModelHostMapping
from gmemlab.uapi import VmType


def test_identical_models_never_diverge() -> None:
    report = fuzz(lambda: ModelBackend(), lambda: ModelBackend(), examples=60, seed_value=3)
    assert report.sequences >= 60 and report.finding is None
    assert report.operations > 60 * 10  # sequences are long (up to DEFAULT_MAX_OPS), not one or two calls


def test_planted_vm_type_difference_is_found_and_shrunk() -> None:
    # A host offering only default VMs: sequences that ask for the VM types diverge at once.
    other = HostConfig.upstream().with_(vm_types=(VmType.DEFAULT,))
    report = fuzz(lambda: ModelBackend(), lambda: ModelBackend(config=other), examples=DEFAULT_EXAMPLES,
                  seed_value=1)
    f = report.finding
    assert f is not None and f.kind == "divergence"
    assert "vm_types" in f.left + f.right or "KVM_CREATE_VM" in f.left + f.right or "create_vm" in f.left
    assert len(report.ops) <= 3
    assert compare_sequence(lambda: ModelBackend(), lambda: ModelBackend(config=other), report.ops) is not None


def test_planted_slot_id_difference_is_found_within_the_default_budget() -> None:
    other = HostConfig(nr_memslots=3)  # slot ids >= 3 refused (KVM_CAP_NR_MEMSLOTS tells too: not asked here)
    binding = [name for name in OPS if "check_extension" not in name]
    report = fuzz(lambda: ModelBackend(), lambda: ModelBackend(config=other), examples=DEFAULT_EXAMPLES,
                  seed_value=1, ops=binding)
    f = report.finding
    assert f is not None and f.kind == "divergence" and "set_user_memory_region2" in f.left
    assert len(report.ops) <= 4, report.ops


def test_an_exception_inside_a_backend_is_a_finding_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(ModelBackend):
        def mmap_anonymous(self, length: int):  # type: ignore[no-untyped-def]
            raise TypeError("planted crash")

    report = fuzz(lambda: ModelBackend(), lambda: Broken(), examples=DEFAULT_EXAMPLES, seed_value=2)
    f = report.finding
    assert f is not None and f.kind == "exception" and "planted crash" in f.detail and f.detail.startswith("kernel:")
    assert len(report.ops) == 1 and report.ops[0]["op"] == "mmap_anon"


def test_a_broken_invariant_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    def check(self: ModelBackend) -> None:
        assert not self.vms, "planted: no VM may exist"

    class Checked(ModelBackend):
        check_invariants = check

    report = fuzz(lambda: ModelBackend(), lambda: Checked(), examples=DEFAULT_EXAMPLES, seed_value=2)
    f = report.finding
    assert f is not None and f.kind == "invariant" and "planted" in f.detail
    assert len(report.ops) == 1 and report.ops[0]["op"] == "create_vm"


class NoMlock(ModelBackend):
    """A backend that cannot mlock: every mapping it makes refuses as unsupported."""

    def mmap_anonymous(self, length: int) -> ModelHostMapping:
        m = super().mmap_anonymous(length)

        def refuse(*args: object) -> None:
            raise UnsupportedByBackend("mlock (planted)")

        m.mlock = refuse  # type: ignore[method-assign]
        return m


def test_one_side_skipping_is_a_gap_unless_allowed() -> None:
    report = fuzz(lambda: ModelBackend(), lambda: NoMlock(), examples=DEFAULT_EXAMPLES, seed_value=4,
                  ops=["mmap_anon", "mlock", "host_read"])
    assert report.finding is not None and report.finding.kind == "gap" and "mlock (planted)" in report.finding.detail
    allowed = fuzz(lambda: ModelBackend(), lambda: NoMlock(), examples=30, seed_value=4,
                   ops=["mmap_anon", "mlock", "host_read"], allow_gaps=True)
    assert allowed.finding is None and sum(allowed.stats.gaps.values()) > 0


@pytest.mark.parametrize("text,needle", [
    ("[", "not JSON"), ("{}", "format"), ('[{"op": "dance"}]', "unknown op"),
    ('[{"op": "create_gmem"}]', "missing"), ('[{"op": "unbind", "vm": "a", "slot": 1}]', "vm must be"),
    ('[{"op": "unbind", "vm": 0, "slot": 1, "colour": 2}]', "unknown field colour"),
    ('[{"op": "file_op", "gmem": 0, "which": "sing"}]', "which must be one of"),
    ('[{"op": "bind", "vm": 0, "slot": 1, "gpa_page": 0, "pages": 1, "gmem": -1, "offset": 0, "flags": 4, '
     '"uaddr_map": null, "far": false}]', "gmem must be null or a non-negative"),
    ('{"format": "gmemlab-fuzz-sequence", "ops": 3}', "JSON list"),
])
def test_replay_input_errors_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        load_sequence(text)


def test_saved_sequences_load_back() -> None:
    ops = [{"op": "create_vm", "type": 0}, {"op": "create_gmem", "vm": 0, "size": 4096, "flags": 3}]
    assert load_sequence(dump_sequence(ops, seed=3)) == ops
    assert load_sequence(json.dumps(ops)) == ops


def test_cli_self_check_replay_and_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["fuzz", "--backend", "model", "--examples", "20", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["findings"] == []
    seq = tmp_path / "seq.json"
    seq.write_text(json.dumps([{"op": "create_vm", "type": 0}, {"op": "create_gmem", "vm": 0, "size": 4096,
                                                                "flags": 3}]))
    res = runner.invoke(app, ["fuzz", "--backend", "model", "--replay", str(seq)])
    assert res.exit_code == 0 and "no divergence" in res.output
    # nothing ran: every operation lacks its target
    seq.write_text(json.dumps([{"op": "munmap", "map": 0}]))
    assert runner.invoke(app, ["fuzz", "--backend", "model", "--replay", str(seq)]).exit_code == 3
    # bad replay files: usage errors, no traceback
    for text in ("[", '[{"op": "dance"}]'):
        seq.write_text(text)
        res = runner.invoke(app, ["fuzz", "--backend", "model", "--replay", str(seq)])
        assert res.exit_code == 2 and "Traceback" not in res.output
    res = runner.invoke(app, ["fuzz", "--backend", "model", "--replay", str(tmp_path / "missing.json")])
    assert res.exit_code == 2


def test_cli_internal_error_exits_4_with_a_saved_trace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import gmemlab.cli.fuzz as cli_fuzz

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planted harness bug")

    monkeypatch.setattr(cli_fuzz, "fuzz", explode)
    monkeypatch.setenv("GMEMLAB_VM_OUT", str(tmp_path))
    res = CliRunner().invoke(app, ["fuzz", "--backend", "model", "--examples", "5"])
    assert res.exit_code == 4
    assert "internal error" in res.output and "planted harness bug" in res.output
    traces = list(tmp_path.glob("gmemlab-crash-*.txt"))
    assert len(traces) == 1 and "RuntimeError" in traces[0].read_text()


def test_cli_finding_exits_1_saves_and_replays(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import gmemlab.cli.fuzz as cli_fuzz

    other = HostConfig(nr_memslots=3)
    monkeypatch.setattr(cli_fuzz, "_factories", lambda backend, profile=None: (
        (lambda: ModelBackend()), (lambda: ModelBackend(config=other)), "model vs planted model"))
    save = tmp_path / "found.json"
    res = CliRunner().invoke(app, ["fuzz", "--backend", "model", "--seed", "1", "--save", str(save)])
    assert res.exit_code == 1, res.output
    assert "divergence" in res.output and "minimal sequence" in res.output and save.exists()
    res = CliRunner().invoke(app, ["fuzz", "--backend", "model", "--replay", str(save)])
    assert res.exit_code == 1 and "divergence" in res.output


@pytest.mark.parametrize(("ksm", "thp"), [(True, True), (False, True), (False, False)])
def test_madvise_case_follows_the_kernels_build(ksm: bool, thp: bool) -> None:
    """fuzz_madvise_every_advice takes MADV_[UN]MERGEABLE / MADV_[NO]HUGEPAGE from the backend's mm features
    (the lab 6.18.2 kernel has no CONFIG_KSM): it passes on a model of each build, and fails on a model that
    answers as another build does."""
    from gmemlab.conformance import cases_for, run_case

    case = next(c for c in cases_for("linux-6.18") if c.name == "fuzz_madvise_every_advice")
    built = HostConfig(ksm=ksm, thp=thp)
    result = run_case(case, lambda p: ModelBackend(p, built), "model", "linux-6.18")
    assert result.status == "pass", result.detail

    class Lying(ModelBackend):  # claims the other build: the expectation changes, the answers do not
        def mm_features(self) -> dict[str, bool]:
            return {"ksm": not ksm, "transparent_hugepage": thp}

    result = run_case(case, lambda p: Lying(p, built), "model", "linux-6.18")
    assert result.status == "fail", result.detail


def test_a_recycled_id_does_not_inherit_a_file_offset():
    """The world keeps each gmem mapping's file offset by id(mapping): an entry whose object is not the one
    asked about (its id was reused after an munmap freed the old mapping) must not give its offset away (the
    flaky divergence of host seed 911), and munmap drops the entry."""
    from gmemlab.conformance.fuzz_ops import World, munmap

    w = World(system=None, gpa_base=0)
    old, new = object(), object()
    w.file_offsets[id(new)] = (old, 253952)  # what a reused id looks like
    assert w.base(new) == 0

    class Mapping:
        def munmap(self) -> None:
            pass

    m = Mapping()
    w.maps.append(m)
    w.file_offsets[id(m)] = (m, 4096)
    assert w.base(m) == 4096
    munmap(w, {"op": "munmap", "map": 0}, m)
    assert id(m) not in w.file_offsets
