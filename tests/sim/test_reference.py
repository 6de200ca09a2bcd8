"""The range path against the per-page reference run (simulator issue item 1): the simulator's faults,
host touches and vendor decisions, taken in runs by the model's range operations, against one model fault
per page, one host fault per touched page and one RMP lookup per 2 MiB (:mod:`gmemlab.sim.reference`, which
shares none of the batching code). Small guests: the reference walks pages."""

from __future__ import annotations

import time

import pytest

from gmemlab.sim.run import simulate

# (scenario, overrides): every built-in at a size the per-page run affords, and the variants that take
# other paths (backing sizes, TDX 2M, no mmap, order-0 folios, TDP capped at 4K, staged splits).
CASES = [
    ("snp-lazy-accept-64g", ["guest_mem=1GiB", "runtime_s=10"]),
    ("snp-lazy-accept-64g", ["guest_mem=4GiB", "runtime_s=5", "backing.page=2MiB"]),
    ("snp-mmap-populate-64g", ["guest_mem=1GiB", "runtime_s=5"]),
    ("snp-eager-accept-64g", ["guest_mem=1GiB", "runtime_s=5"]),
    ("snp-16g-2m-reference", ["guest_mem=4GiB"]),
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
]


@pytest.mark.parametrize(("name", "sets"), CASES)
@pytest.mark.parametrize("policy", ["eager", "deferred"])
def test_range_path_matches_the_per_page_reference(name, sets, policy):
    fast = simulate(name, policy, sets)
    slow = simulate(name, policy, sets, reference=True, coalesce=False)
    assert fast.counters == slow.counters
    assert fast.metrics == slow.metrics


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
