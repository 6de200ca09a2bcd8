"""The range path against the per-page reference run (simulator issue item 1): the simulator's faults,
host touches and vendor decisions, taken in runs by the model's range operations, against one model fault
per page, one host fault per touched page and one RMP lookup per 2 MiB (:mod:`gmemlab.sim.reference`, which
shares none of the batching code). Small guests: the reference walks pages."""

from __future__ import annotations

import time

import pytest

from gmemlab.sim.engine import Engine
from gmemlab.sim.run import simulate
from gmemlab.workload.scenario import load_scenario

# (scenario, overrides): every built-in at a size the per-page run affords, and the variants that take
# other paths (backing sizes, TDX 2M, no mmap, order-0 folios, TDP capped at 4K, staged splits).
CASES = [
    ("snp-lazy-accept-64g", ["guest_mem=1GiB", "runtime_s=10"]),
    ("snp-lazy-accept-64g", ["guest_mem=4GiB", "runtime_s=5", "backing.page=2MiB"]),
    ("snp-mmap-populate-64g", ["guest_mem=1GiB", "runtime_s=5"]),
    ("snp-eager-accept-64g", ["guest_mem=1GiB", "runtime_s=5"]),
    ("snp-16g-2m-reference", ["guest_mem=4GiB"]),
    ("snp-lazy-accept-64g", ["guest_mem=1GiB", "runtime_s=5", "arch_limits.private_max_level=4K"]),
    ("tdx-boot-64g", ["guest_mem=1GiB", "runtime_s=5"]),
    ("tdx-boot-64g", ["guest_mem=4GiB", "runtime_s=5", "arch_limits.private_max_level=2M"]),
    ("tdx-boot-64g", ["guest_mem=1GiB", "runtime_s=5", "gmem_flags.mmap=false"]),
    ("churn-pingpong", ["runtime_s=2"]),
    ("dpdk-shared-buffers-64g", ["guest_mem=4GiB", "shared_regions.swiotlb.size=1GiB", "runtime_s=5"]),
    ("pkvm-android-1g", ["guest_mem=256MiB", "runtime_s=5"]),
    ("pkvm-android-1g", ["guest_mem=256MiB", "runtime_s=5", "arch_limits.private_max_level=4K"]),
    ("non-coco-mmap-64g", ["guest_mem=256MiB", "runtime_s=5", "backing.page=2MiB"]),
    ("non-coco-mmap-64g", ["guest_mem=1GiB", "runtime_s=5", "guest_touch.fraction_of_mem=0.25"]),
    ("attr-init-1t", ["guest_mem=1GiB"]),
    # runs of identical calls (Repeat) where the shortcut does not apply: conversions that do work, 4K units
    ("snp-lazy-accept-64g", ["guest_mem=1GiB", "runtime_s=3", "set_attr_private=false"]),
    ("snp-lazy-accept-64g", ["guest_mem=1GiB", "runtime_s=3", "accept.unit=4KiB"]),
    ("tdx-boot-64g", ["guest_mem=3GiB", "runtime_s=3", "accept.firmware=all"]),
    ("snp-eager-accept-64g", ["guest_mem=6GiB", "runtime_s=3", "accept.firmware=all"]),
]


@pytest.mark.parametrize(("name", "sets"), CASES)
@pytest.mark.parametrize("policy", ["eager", "deferred"])
def test_range_path_matches_the_per_page_reference(name, sets, policy):
    fast = simulate(name, policy, sets)
    slow = simulate(name, policy, sets, reference=True, coalesce=False)
    assert fast.counters == slow.counters
    assert fast.metrics == slow.metrics


@pytest.mark.parametrize("name", ["snp-lazy-accept-64g", "tdx-boot-64g", "snp-eager-accept-64g"])
def test_runs_of_calls_taken_at_once_match_the_reference(name):
    """Runs of identical calls (Repeat) applied at once, against the reference applying them call by call."""
    sets = ["guest_mem=4GiB", "runtime_s=3", "accept.accepted_eventually=all"]
    fast = Engine(load_scenario(name, sets), "eager").run()
    assert fast.bulk_runs > 0
    slow = Engine(load_scenario(name, sets), "eager", reference=True, coalesce=False).run()
    assert slow.bulk_runs == 0
    assert fast.counters == slow.counters and fast.events == slow.events
    assert fast.model_metrics() == slow.model_metrics()
    assert dict(fast.machine.metrics) == dict(slow.machine.metrics)


@pytest.mark.parametrize("policy", ["eager+staged", "deferred+direct", "eager+merge-never"])
def test_every_policy_shape_matches_the_reference(policy):
    sets = ["guest_mem=2GiB", "runtime_s=5"]
    fast = simulate("snp-lazy-accept-64g", policy, sets)
    slow = simulate("snp-lazy-accept-64g", policy, sets, reference=True, coalesce=False)
    assert fast.counters == slow.counters and fast.metrics == slow.metrics


def test_the_reference_is_a_different_path():
    """It must be able to disagree: the reference takes one model fault per 4K leaf, the range path does
    not, so on a 4K-heavy run it is much slower (and a seeded difference in either shows, see below)."""
    sets = ["guest_mem=256MiB", "runtime_s=1", "backing.page=2MiB"]
    t0 = time.perf_counter()
    simulate("non-coco-mmap-64g", "eager", sets)
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulate("non-coco-mmap-64g", "eager", sets, reference=True, coalesce=False)
    assert time.perf_counter() - t0 > 3 * fast


def test_a_seeded_bug_in_the_range_path_is_caught(monkeypatch):
    """Make the range path map 2M runs with one fault too few: the comparison fails."""
    import gmemlab.model.tdp as tdp

    original = tdp._map_like

    def buggy(vm, slot, probe, p, q, level, is_private, max_level):
        done = original(vm, slot, probe, p, q, level, is_private, max_level)
        if done > p:
            vm.counters.add("guest_faults", -1)  # one fault lost per run taken in bulk
        return done

    monkeypatch.setattr(tdp, "_map_like", buggy)
    sets = ["guest_mem=1GiB", "runtime_s=2"]
    fast = simulate("snp-lazy-accept-64g", "eager", sets)
    monkeypatch.setattr(tdp, "_map_like", original)
    slow = simulate("snp-lazy-accept-64g", "eager", sets, reference=True, coalesce=False)
    assert fast.metrics["guest_faults"] != slow.metrics["guest_faults"]
