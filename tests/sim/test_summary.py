"""Derived counts (``scenarios describe``) agree with the generated streams (workloads.md §6)."""

from __future__ import annotations

import pytest

from gmemlab.arch import generate
from gmemlab.sim.summary import derived_counts
from gmemlab.workload import events as ev
from gmemlab.workload.scenario import load_scenario

from .test_generators import REDUCED
from .test_scenario import BUILTINS


def expected_exits(sc):
    (row,) = [c for c in derived_counts(sc) if c.quantity == "expected userspace exits"]
    lo, _, hi = row.value.replace(",", "").partition(" to ")
    return int(lo), int(hi or lo)


@pytest.mark.parametrize("sets", [(), "reduced"], ids=["full", "reduced"])
@pytest.mark.parametrize("name", BUILTINS)
def test_expected_exits_bound_the_stream(name, sets):
    sc = load_scenario(name, REDUCED[name] if sets == "reduced" else [])
    lo, hi = expected_exits(sc)
    counted = sum(1 for e in generate(sc, 5) if isinstance(e, ev.HcMapGpa))
    assert lo <= counted <= hi


def test_section6_rows_in_describe():
    rows = {c.quantity: c.value for c in derived_counts(load_scenario("snp-lazy-accept-64g"))}
    assert rows["4K / 2M / 1G pages"] == "16,777,216 / 32,768 / 64"
    assert rows["accept chunks (total / boot / runtime)"] == "16,384 / 1,024 / 15,360"
    assert rows["SNP accept: PSC VMGEXITs / userspace exits"] == "16,384 / 16,384"
    assert rows["SNP accept: PVALIDATE"].startswith("32,768 at 2MiB (or 16,777,216")
    assert rows["shared region swiotlb"] == "1GiB"
    assert rows["swiotlb: PSC entries (2M + 4K) -> VMGEXITs"] == "aligned 512+0 -> 8; unaligned <= 511+512 -> 16"
    assert rows["SET_ATTR(all, private)"] == "16,777,216 xarray stores, >= 1.68 s"
    tdx = {c.quantity: c.value for c in derived_counts(load_scenario("tdx-boot-64g"))}
    assert tdx["swiotlb: MapGPA userspace exits"] == "512"
    assert tdx["TDX accept: 4K accepts at 4K S-EPT"] == "16,777,216, ~134 s of vCPU time"
