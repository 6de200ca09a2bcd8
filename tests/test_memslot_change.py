"""Dropping KVM_MEM_GUEST_MEMFD from an existing memslot: which releases accept it, how the model follows the
kernel under test through its release, and that the case can fail (issue 15 item 3)."""

from __future__ import annotations

import pytest

from gmemlab.conformance import cases_for, run_case
from gmemlab.hostfacts import HostFacts
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.model import config as model_config
from gmemlab.model.config import gmem_flag_toggle_accepted


@pytest.mark.parametrize(
    "release,accepted",
    [("6.18.2-gmemlab-g57dc26c98e5e", True), ("6.18.0", True), ("6.18", True), ("6.18.3", False),
     ("6.18.44-fc-v445", False), ("6.19.0-rc1", False), ("7.3.4+deb14-amd64", False), ("6.12.40", True),
     ("model linux-6.18", False)],
)
def test_release_decides(release: str, accepted: bool) -> None:
    facts = HostFacts(release, {}, {}, ("default",), 1, (0, 1 << 36))
    assert gmem_flag_toggle_accepted(facts.release_version) is accepted
    assert HostConfig.from_facts(facts).gmem_flag_toggle is accepted  # type: ignore[attr-defined]


def test_the_fixed_sublevel_is_one_overridable_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(model_config.GMEM_FLAG_TOGGLE_FIXED_IN, (6, 18), 50)  # e.g. a vendor kernel without it
    assert gmem_flag_toggle_accepted((6, 18, 44))
    monkeypatch.setitem(model_config.GMEM_FLAG_TOGGLE_FIXED_IN, (6, 12), 63)
    assert not gmem_flag_toggle_accepted((6, 12, 63))


def _run(config: HostConfig):  # type: ignore[no-untyped-def]
    case = next(c for c in cases_for("linux-6.18") if c.name == "gmem_slot_drop_guest_memfd_flag")
    return run_case(case, lambda p: ModelBackend(p, config), "model", "linux-6.18")


@pytest.mark.parametrize("toggle", [False, True])
def test_case_passes_both_ways(toggle: bool) -> None:
    result = _run(HostConfig.upstream().with_(gmem_flag_toggle=toggle))
    assert result.status == "pass", result.detail
    outcome = next(o.outcome for o in result.observations if o.method == "set_user_memory_region2" and
                   o.args[1] == 0)
    assert outcome[0] == ("ok" if toggle else "errno")


def test_seeded_bugs_fail_the_case(monkeypatch: pytest.MonkeyPatch) -> None:
    from gmemlab.model import kvm_main

    config = HostConfig.upstream().with_(gmem_flag_toggle=True)
    # accepting the change but unbinding the file range (what the later hardening patch does on purpose)
    real = kvm_main.orphan_gmem_leaves
    monkeypatch.setattr(kvm_main, "orphan_gmem_leaves",
                        lambda vm, old: (real(vm, old), old.gmem_file.kvm_gmem_unbind(old)))
    result = _run(config)
    assert result.status == "fail" and "expected EINVAL" in result.detail, result.detail
    # accepting it but zapping the leaves as a move would
    monkeypatch.setattr(kvm_main, "orphan_gmem_leaves", lambda vm, old: vm.stage2.zap(old.base_gfn, old.end_gfn))
    result = _run(config)
    assert result.status == "fail" and "keeps its guest_memfd page" in result.detail, result.detail
