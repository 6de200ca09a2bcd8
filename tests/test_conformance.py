"""Every conformance case, in pytest, on the model (both profiles); plus the runner and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.conformance import cases_for, compare, run_case
from gmemlab.conformance.record import Observation, Recorder
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.model.pagecache import PageCache

# (profile, kvm.gmem_in_place_conversion): linux-7.4 with both values of its module parameter.
RUNS = [("linux-6.18", None), ("linux-7.3", None), ("linux-7.4", True), ("linux-7.4", False), ("rfc-v2", None)]
CASES = [(p, param, c) for p, param in RUNS for c in cases_for(p)]


@pytest.mark.parametrize("profile,param,case", CASES,
                         ids=[f"{p}{'' if v is None else ':inplace=' + 'YN'[not v]}:{c.name}" for p, v, c in CASES])
def test_case_on_model(profile: str, param: bool | None, case) -> None:  # type: ignore[no-untyped-def]
    config = HostConfig.upstream().with_(gmem_in_place_conversion=param)
    result = run_case(case, lambda p: ModelBackend(p, config), "model", profile)
    if result.status == "skip":
        assert result.detail, "a skip must say why"
        pytest.skip(result.detail)
    assert result.status == "pass", result.detail


def test_listed_checklist_is_covered() -> None:
    names = {c.name for p in ("linux-6.18", "linux-7.3", "linux-7.4", "rfc-v2") for c in cases_for(p)}
    upstream = {"test_guest_memfd_flags", "test_create_guest_memfd_multiple", "test_create_guest_memfd_invalid_sizes",
                "test_file_read_write", "test_mmap_not_supported", "test_mmap_supported", "test_fault_overflow",
                "test_fault_private", "test_mmap_cow", "test_mbind", "test_numa_allocation", "test_collapse",
                "test_file_size", "test_fallocate", "test_invalid_punch_hole", "test_guest_memfd_guest",
                "test_invalid_memory_region_flags", "test_add_private_memory_region",
                "test_add_overlapping_private_memory_regions"}
    rfc = {"test_gmem_flag_validity", "test_bind_guest_memfd_wrt_userspace_addr", "test_faulting_allowed",
           "test_faulting_sigbus", "test_sharing", "test_init_mappable_false", "test_conversion_before_allocation",
           "test_conversion_if_not_all_folios_allocated", "test_conversions_should_not_affect_surrounding_pages",
           "test_conversions_should_fail_if_memory_has_elevated_refcount",
           "test_truncate_should_not_change_mappability", "test_fault_type_independent_of_mem_attributes",
           "test_truncate_shared_while_pinned", "test_truncate_private", "test_close_with_pinning"}
    assert upstream | rfc <= names


def _case(name: str, profile: str = "linux-6.18"):  # type: ignore[no-untyped-def]
    return next(c for c in cases_for(profile) if c.name == name)


def test_a_broken_model_fails_the_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite can fail: a model whose hole punch keeps contents fails test_mmap_supported."""
    monkeypatch.setattr(PageCache, "truncate", lambda self, start, end: 0)
    result = run_case(_case("test_mmap_supported"), lambda p: ModelBackend(p), "model", "linux-6.18")
    assert result.status == "fail" and "punched page" in result.detail


def test_a_model_ignoring_pins_fails_the_refcount_case(monkeypatch: pytest.MonkeyPatch) -> None:
    from gmemlab.model.gmem import GmemInode

    monkeypatch.setattr(GmemInode, "first_elevated_refcount", lambda self, s, e: None)
    case = _case("test_conversions_should_fail_if_memory_has_elevated_refcount", "rfc-v2")
    result = run_case(case, lambda p: ModelBackend(p), "model", "rfc-v2")
    assert result.status == "fail" and "expected EAGAIN" in result.detail


def test_invariant_violation_fails_the_case(monkeypatch: pytest.MonkeyPatch) -> None:
    from gmemlab.model.host import ModelHostMapping

    original = ModelHostMapping.zap
    monkeypatch.setattr(ModelHostMapping, "zap", lambda self, a, b: 0 if self.file else original(self, a, b))
    case = _case("test_sharing", "rfc-v2")
    result = run_case(case, lambda p: ModelBackend(p), "model", "rfc-v2")
    assert result.status == "fail"


def test_compare_reports_the_first_divergent_call() -> None:
    case = _case("test_file_size")
    a = run_case(case, lambda p: ModelBackend(p), "model", "linux-6.18")
    b = run_case(case, lambda p: ModelBackend(p), "kernel", "linux-6.18")
    assert compare(a, b) == []
    b.observations[3] = Observation("gmem1", "fstat", (), ("ok", (1, 2, 3)))
    divs = compare(a, b)
    assert len(divs) == 1 and divs[0].index == 3 and "(1, 2, 3)" in divs[0].kernel


def test_recorder_symbolises_fds_addresses_and_bytes() -> None:
    rec = Recorder()
    system = rec.wrap(ModelBackend(), "kvm")
    vm = system.create_vm(0)
    g = vm.create_guest_memfd(4096, 3)
    m = g.mmap(4096)
    m.write(0, b"\xaa" * 64)
    vm.set_user_memory_region2(1, 4, 1 << 32, 4096, userspace_addr=m.address, guest_memfd=g, guest_memfd_offset=0)
    texts = [str(o) for o in rec.log]
    assert texts[-2] == "map1.write(0, 64x0xaa) -> ok None"
    assert "userspace_addr=map1+0x0" in texts[-1] and "guest_memfd=gmem1" in texts[-1]


runner = CliRunner()


def test_cli_conformance_json() -> None:
    res = runner.invoke(app, ["conformance", "--backend", "model", "--profile", "rfc-v2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data) == {"gmemlab_version", "cases", "summary"}
    assert data["summary"]["fail"] == 0 and data["summary"]["pass"] > 20
    assert set(data["cases"][0]) >= {"name", "backend", "profile", "status", "detail"}


def test_cli_conformance_tap() -> None:
    res = runner.invoke(app, ["conformance", "--tap", "--profile", "linux-6.18", "-k", "test_fallocate"])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines[0] == "KTAP version 1" and lines[1] == "1..1" and lines[2].startswith("ok 1 test_fallocate")


def test_cli_table_and_bad_arguments() -> None:
    res = runner.invoke(app, ["conformance", "--profile", "linux-6.18"])
    assert res.exit_code == 0 and "passed" in res.output
    bad = runner.invoke(app, ["conformance", "--profile", "linux-9"])
    assert bad.exit_code == 2 and "linux-9" in bad.output
    nothing = runner.invoke(app, ["conformance", "-k", "no-such-case"])
    assert nothing.exit_code != 0


def test_junit_report_and_nothing_ran(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import xml.etree.ElementTree as ET

    out = tmp_path / "report.xml"
    res = runner.invoke(app, ["conformance", "--profile", "linux-6.18", "-k", "test_file_size", "--junit", str(out)])
    assert res.exit_code == 0, res.output
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0"
    assert suite.find("testcase").get("name") == "test_file_size"  # type: ignore[union-attr]
    before = out.read_bytes()
    bad = runner.invoke(app, ["conformance", "--profile", "linux-9", "--junit", str(out)])
    assert bad.exit_code == 2 and out.read_bytes() == before
    assert runner.invoke(app, ["conformance", "--junit", ""]).exit_code == 2
