"""The profile lineage: each profile states exactly what it overrides; unverified values are overridable."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.model.profiles import BEHAVIOURS, Behaviour, in_place_default
from gmemlab.uapi import (
    CAP_GMEM_ATTRIBUTES_ENV,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PROFILES,
    Cap,
    VmType,
    cap_guest_memfd_memory_attributes,
    lineage,
)

runner = CliRunner()
PRIVATE = KVM_MEMORY_ATTRIBUTE_PRIVATE


def test_lineage() -> None:
    assert lineage("linux-7.4-v8") == ["linux-7.4-v8", "linux-7.4", "linux-7.3", "linux-6.18"]
    assert lineage("rfc-v2") == ["rfc-v2"]
    for name, b in BEHAVIOURS.items():
        parent = PROFILES[name].parent
        if parent is not None:
            assert type(b).__mro__[1] is type(BEHAVIOURS[parent]), f"{name} must subclass {parent}'s behaviour"


def _overrides(cls: type) -> set[str]:
    """The members a profile class defines itself (methods and properties)."""
    assert issubclass(cls, Behaviour)
    return {k for k, v in vars(cls).items()
            if not k.startswith("__") and k != "CHANGES" and (callable(v) or isinstance(v, property))}


@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_changes_list_exactly_the_overrides(name: str) -> None:
    """'Each profile states only its differences from its parent': every overridden member is named by one
    of its CHANGES, and every change names a member it really overrides."""
    cls = type(BEHAVIOURS[name])
    listed = {h for c in cls.CHANGES for h in c.hooks}
    assert cls.CHANGES, f"{name} lists no change"
    assert listed == _overrides(cls), f"{name}: listed {sorted(listed)}, overrides {sorted(_overrides(cls))}"


def test_capability_number_is_one_overridable_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = HostConfig.upstream().with_(gmem_in_place_conversion=True)
    assert cap_guest_memfd_memory_attributes() == 250
    assert ModelBackend("linux-7.4", cfg).check_extension(250) == PRIVATE
    monkeypatch.setenv(CAP_GMEM_ATTRIBUTES_ENV, "251")
    backend = ModelBackend("linux-7.4", cfg)
    assert backend.check_extension(251) == PRIVATE and backend.check_extension(250) == 0
    assert ModelBackend("linux-7.3", cfg).check_extension(251) == 0
    monkeypatch.setenv(CAP_GMEM_ATTRIBUTES_ENV, "two-fifty")
    with pytest.raises(ValueError, match="not a capability number"):
        cap_guest_memfd_memory_attributes()
    res = runner.invoke(app, ["profiles"])  # a UsageError is one line and exit status 2
    assert res.exit_code == 2 and "two-fifty" in res.stderr


def test_parameter_default_is_one_overridable_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    # v8: on exactly when the per-VM attribute option is compiled out (realkernel-private.md 1/param: B Y, Bv N)
    assert in_place_default(vm_memory_attributes=False) is True
    assert in_place_default(vm_memory_attributes=True) is False
    assert ModelBackend("linux-7.4", HostConfig(memory_attributes=False)).check_extension(250) == PRIVATE
    assert ModelBackend("linux-7.4", HostConfig(memory_attributes=True)).check_extension(250) == 0
    monkeypatch.setenv("GMEMLAB_GMEM_IN_PLACE_CONVERSION_DEFAULT", "Y")
    assert ModelBackend("linux-7.4", HostConfig(memory_attributes=True)).check_extension(250) == PRIVATE
    monkeypatch.setenv("GMEMLAB_GMEM_IN_PLACE_CONVERSION_DEFAULT", "maybe")
    with pytest.raises(ValueError, match="auto, Y or N"):
        in_place_default(True)


def test_parameter_effects_on_capabilities() -> None:
    """linux-7.md 1.1: on -> per-VM attribute mask 0, gmem attributes PRIVATE on /dev/kvm and private VMs only,
    INIT_SHARED valid for SW_PROTECTED; off -> exactly linux-7.3's answers."""
    on = ModelBackend("linux-7.4", HostConfig.upstream().with_(gmem_in_place_conversion=True))
    off = ModelBackend("linux-7.4", HostConfig.upstream().with_(gmem_in_place_conversion=False))
    ref = ModelBackend("linux-7.3", HostConfig.upstream())
    caps = [*Cap, 250]
    for vm_type in VmType:
        vms = [b.create_vm(int(vm_type)) for b in (on, off, ref)]
        assert [vms[1].check_extension(c) for c in caps] == [vms[2].check_extension(c) for c in caps]
        assert vms[0].check_extension(Cap.MEMORY_ATTRIBUTES) == 0
        assert vms[0].check_extension(250) == (PRIVATE if vm_type.has_private_mem else 0)
        assert vms[0].check_extension(Cap.GUEST_MEMFD_FLAGS) == 0x3
    assert on.check_extension(250) == PRIVATE and off.check_extension(250) == 0


def test_profiles_command() -> None:
    res = runner.invoke(app, ["profiles"])
    assert res.exit_code == 0
    for name in PROFILES:
        assert name in res.output
    data = json.loads(runner.invoke(app, ["profiles", "linux-7.4", "--json"]).output)
    assert [p["name"] for p in data["profiles"]] == ["linux-6.18", "linux-7.3", "linux-7.4"]
    assert any("EEXIST" in c["summary"] for c in data["profiles"][1]["changes"])
    assert {u["name"] for u in data["unverified"]} == {"KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES",
                                                       "kvm.gmem_in_place_conversion default"}
    bad = runner.invoke(app, ["profiles", "linux-9"])
    assert bad.exit_code == 2 and "linux-9" in bad.stderr


def test_linux_7_md_cases_are_registered() -> None:
    """Every case of guest_memfd_conversions_test.c listed in linux-7.md 1.4, the in-place modes of the two
    private_mem tests, and one case per step of linux-7.md 1.2 run under linux-7.4."""
    from gmemlab.conformance import cases_for

    names = {c.name for c in cases_for("linux-7.4")}
    listed = {"init_private", "init_shared", "indexing", "before_allocation_shared", "before_allocation_private",
              "unallocated_folios", "truncate", "forked_accesses", "elevated_refcount"}
    assert {f"conversions_{n}" for n in listed} <= names
    assert {"private_mem_conversions_in_place", "private_mem_kvm_exits_in_place"} <= names
    steps = {n.split("_")[1] for n in names if n.startswith("attributes2_step")}
    assert steps == {f"step{i:02d}" for i in range(1, 11)}
    for n in ("test_mbind", "test_numa_allocation", "test_collapse", "test_add_overlapping_private_memory_regions"):
        assert n in {c.name for c in cases_for("linux-7.3")}
