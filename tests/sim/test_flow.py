"""Conversion flows (issue 14 item 8, :mod:`gmemlab.sim.flow`): the in-place launch on linux-7.4 against the
per-VM attribute flow on linux-7.3, driven through the model's own paths, side by side."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import gmemlab.model.gmem_attributes as gmem_attributes
import gmemlab.sim.machine as machine_mod
from gmemlab.cli import app
from gmemlab.errors import UsageError
from gmemlab.model.kvm_main import ModelVm
from gmemlab.sim.flow import IN_PLACE, PER_VM, flow_for
from gmemlab.sim.machine import Machine
from gmemlab.sim.run import simulate
from gmemlab.workload.events import CreateGmem, SetMemoryRegion
from gmemlab.workload.scenario import load_scenario
from gmemlab.workload.units import GiB, KiB, MiB

NAME = "snp-inplace-launch-64g"
SMALL = ["guest_mem=1GiB", "runtime_s=2"]
# The built-in's RAM payload with a source: OVMF 4 MiB + secrets, CPUID and one normal page (ZERO pages have none).
IMAGE = 4 * MiB + 3 * 4 * KiB


def _spy(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[tuple[object, ...]]:
    calls: list[tuple[object, ...]] = []
    real = getattr(owner, name)

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(args + tuple(sorted(kwargs.items())))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_in_place_flow_drives_attributes2_and_launches_with_a_null_source(monkeypatch: pytest.MonkeyPatch) -> None:
    attrs2 = _spy(monkeypatch, gmem_attributes, "kvm_gmem_set_attributes")
    per_vm = _spy(monkeypatch, ModelVm, "set_memory_attributes")
    populate = _spy(monkeypatch, machine_mod, "kvm_gmem_populate")
    r = simulate(NAME, overrides=SMALL)
    assert (r.flow.profile, r.flow.kind, r.flow.ioctl) == ("linux-7.4", IN_PLACE, "KVM_SET_MEMORY_ATTRIBUTES2")
    assert r.flow.in_place_param is True and r.flow.changes == ()
    m = r.metrics
    assert len(attrs2) >= m["conversions"]["ok"] > 0 and not per_vm and m["attribute_changes"] == 0
    assert populate and all(call[2] is None and "in_place" not in str(call) for call in populate)  # NULL source
    assert m["copied_bytes"] == 0 and r.counters.get("populate_copy_4k", 0) == 0
    assert m["footprint"]["shared_copy_bytes"] == 0 and m["footprint"]["peak_bytes"] >= 1 * GiB


def test_per_vm_flow_drives_the_vm_ioctl_and_copies_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    attrs2 = _spy(monkeypatch, gmem_attributes, "kvm_gmem_set_attributes")
    per_vm = _spy(monkeypatch, ModelVm, "set_memory_attributes")
    r = simulate(NAME, overrides=SMALL, flow=PER_VM)
    assert (r.flow.profile, r.flow.kind, r.flow.ioctl) == ("linux-7.3", PER_VM, "KVM_SET_MEMORY_ATTRIBUTES")
    assert any(c.startswith("populate.method=gmem_populate") for c in r.flow.changes)
    m = r.metrics
    assert not attrs2 and m["conversions"]["ok"] == 0 and m["attribute_changes"] == len(per_vm) > 2
    assert m["copied_bytes"] == IMAGE and r.counters["populate_copy_4k"] == IMAGE // (4 * KiB)
    fp = m["footprint"]
    assert fp["shared_copy_bytes"] >= IMAGE  # the image stays in the shared copy after launch
    assert fp["total_bytes"] == fp["gmem_bytes"] + fp["shared_copy_bytes"] <= fp["peak_bytes"]
    assert r.counters["attr_xarray_pages"] >= 1 * GiB // (4 * KiB)  # SET_ATTR(all, private), row 12


def test_side_by_side_in_place_saves_the_copy_and_the_slot_wide_set_attr() -> None:
    a = simulate(NAME, overrides=SMALL, flow=IN_PLACE)
    b = simulate(NAME, overrides=SMALL, flow=PER_VM)
    assert a.times.cpu_by_row.get("12", 0.0) == 0 < b.times.cpu_by_row["12"]
    assert a.times.boot.seconds < b.times.boot.seconds
    assert a.metrics["copied_bytes"] == 0 < b.metrics["copied_bytes"]
    assert a.label == "linux-7.4 in-place eager" and b.label == "linux-7.3 per-vm eager"
    assert a.as_json()["params"]["flow"] == IN_PLACE and b.as_json()["flow"]["profile"] == "linux-7.3"


def test_per_vm_on_linux_7_4_turns_the_parameter_off() -> None:
    sc = load_scenario(NAME, SMALL)
    _, fl = flow_for(sc, "linux-7.4", PER_VM)
    assert fl.kind == PER_VM and fl.in_place_param is False
    assert fl.host_config_changes() == {"gmem_in_place_conversion": False}


def _per_vm_machine() -> Machine:
    sc, fl = flow_for(load_scenario(NAME, ["guest_mem=1GiB"]), "linux-7.3", PER_VM)
    t = Machine(sc, "eager", fl)
    t.create_gmem(CreateGmem(GiB, False, False, "buddy", 4096, False))
    t.bind(SetMemoryRegion(slot=0, gpa=0, size=GiB, gmem_offset=0))
    return t


def test_conversion_to_private_discards_the_shared_copy() -> None:
    t = _per_vm_machine()
    assert t.write_shared_copy(0, 2 * MiB) == 512
    assert t.footprint()["shared_copy_bytes"] == 2 * MiB
    assert t.set_attr(0, MiB, private=True)
    assert t.footprint()["shared_copy_bytes"] == MiB  # QEMU's ram_block_discard_range
    assert not t.set_attr(0, MiB, private=True)  # no-op: nothing more discarded
    assert t.set_attr(MiB, 2 * MiB, private=False) is False  # already shared: nothing changes
    assert t.footprint()["shared_copy_bytes"] == MiB


def test_footprint_counts_a_page_once_when_host_and_guest_both_hold_it() -> None:
    t = _per_vm_machine()
    t.write_shared_copy(0, 4 * MiB)
    t.fault_range(0, (8 * MiB) >> 12)  # the guest maps [0, 8 MiB) shared through the HVA
    assert t.footprint()["shared_copy_bytes"] == 8 * MiB


@pytest.mark.parametrize(("profile", "flow", "needle"), [
    ("linux-7.3", IN_PLACE, "linux-7.3 has no in-place conversion"),
    ("linux-6.18", IN_PLACE, "linux-6.18 has no in-place conversion"),
    ("linux-7.5", None, "unknown profile"),
    (None, "in-placee", "unknown flow"),
])
def test_a_kernel_without_the_flow_is_refused(profile: str | None, flow: str | None, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        simulate(NAME, overrides=SMALL, profile=profile, flow=flow)


def test_hugetlb_and_non_coco_are_refused_on_linux() -> None:
    with pytest.raises(UsageError, match="HugeTLB guest_memfd exists only in rfc-v2"):
        simulate("snp-lazy-accept-64g", overrides=SMALL, profile="linux-7.4")
    with pytest.raises(UsageError, match=r"buddy_thp \(2MiB folios\): no merged or queued kernel"):
        simulate("pkvm-android-1g", profile="linux-7.3")
    with pytest.raises(UsageError, match="arch = none has no private memory"):
        simulate("non-coco-mmap-64g", overrides=[*SMALL, "backing.allocator=buddy", "backing.page=4KiB"],
                 profile="linux-7.4", flow=IN_PLACE)


def test_rfc_v2_runs_are_unchanged_by_flows() -> None:
    r = simulate("snp-mmap-populate-64g", overrides=SMALL)
    assert r.flow.profile == "rfc-v2" and r.flow.kind == IN_PLACE and not r.flow.changes
    assert r.title == "snp-mmap-populate-64g (guest_mem=1GiB, runtime_s=2)" and r.label == "eager"
    assert r.metrics["copied_bytes"] == 0  # launched in place through the RFC's ioctls


runner = CliRunner()


def test_compare_flows_side_by_side() -> None:
    res = runner.invoke(app, ["compare", NAME, "--flow", "in-place", "--flow", "per-vm",
                              *[a for s in SMALL for a in ("--set", s)]], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = res.output
    assert "Conversion flows side by side" in out and "linux-7.4 in-place eager" in out
    assert "linux-7.3 per-vm eager" in out and "KVM_SET_MEMORY_ATTRIBUTES2" in out
    assert "host memory peak" in out and "bytes copied by kvm_gmem_populate" in out
    assert "12 derived: SET_ATTR with the xarray" in out and "34c derived" in out  # cost rows with their tags
    assert "flow changes, linux-7.3 per-vm eager: gmem_flags.mmap=false" in out


def test_cli_refuses_in_place_on_linux_7_3_in_one_line() -> None:
    code = "import sys; from gmemlab.cli import main; sys.argv = ['gmemlab', *sys.argv[1:]]; main()"
    res = subprocess.run([sys.executable, "-c", code, "run", NAME, "--profile", "linux-7.3", "--flow", "in-place"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 2 and not res.stdout
    assert "linux-7.3 has no in-place conversion" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("profile", "flow"), [("linux-7.3", None), ("linux-7.4", PER_VM)])
def test_pkvm_has_no_per_vm_flow(profile: str, flow: str | None) -> None:
    """pKVM shares through the guest_memfd (GmemConvert events): a per-VM run would hit ENOTTY inside."""
    with pytest.raises(UsageError, match="pkvm guest shares and unshares through the guest_memfd in place"):
        simulate("pkvm-android-1g", overrides=["backing.allocator=buddy", "backing.page=4KiB"], profile=profile,
                 flow=flow)
    r = simulate("pkvm-android-1g", overrides=["backing.allocator=buddy", "backing.page=4KiB"], profile="linux-7.4")
    assert r.flow.attributes2 and r.metrics["conversions"]["ok"] > 0


def test_an_explicit_flow_on_rfc_v2_is_named_in_titles_and_columns() -> None:
    a = simulate("snp-mmap-populate-64g", overrides=SMALL, flow=IN_PLACE)
    b = simulate("snp-mmap-populate-64g", overrides=SMALL, flow=PER_VM)
    assert (a.flow.profile, b.flow.profile) == ("rfc-v2", "rfc-v2")  # the scenario's kernel has both flows
    assert a.label == "rfc-v2 in-place eager" and b.label == "rfc-v2 per-vm eager"
    assert a.title.endswith("on rfc-v2 in-place") and b.metrics["copied_bytes"] > 0 == a.metrics["copied_bytes"]
