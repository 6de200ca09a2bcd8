"""The §4 cost table: rows, sources, counters -> modelled time, overrides (workloads.md §4, §6)."""

from __future__ import annotations

import pytest

from gmemlab.errors import UsageError
from gmemlab.sim.costs import CATEGORIES, DATAPLANE, SOURCES, TAGS, CostTable, load_cost_table
from gmemlab.sim.timing import compute, new_ledger
from gmemlab.workload.units import GiB


def test_every_section4_row_is_present_with_a_source():
    table = CostTable()
    ids = [row.id for row in table.rows]
    assert len(ids) == len(set(ids))
    for number in range(1, 37):
        assert str(number) in ids
    assert {"6m", "7m", "41-4k", "41-2m", "41-1g"} <= set(ids)
    counters = [c for row in table.rows for c in row.counters]
    assert len(counters) == len(set(counters))
    for row in table.rows:
        assert row.tag in TAGS and row.category in (*CATEGORIES, DATAPLANE) and row.unit and row.operation
        assert (row.weight is None) == (not row.counters), row.id
        assert set(row.sources) <= set(SOURCES), row.id
        if row.tag in ("pub", "measured"):
            assert row.sources, f"row {row.id} is tagged {row.tag} without a source"


def test_derived_rows_say_from_what():
    """A row tagged derived names its basis; rows 24 and 36 follow the rows they are derived from."""
    t = CostTable()
    for row in t.rows:
        if row.tag == "derived":
            assert row.basis and (row.sources or row.of), row.id
    assert t.row("24").tag == t.row("36").tag == "derived"
    assert t.derived_from(t.row("24")) == ["23"] and t.derived_from(t.row("36")) == ["10"]
    assert t.cost("24") == pytest.approx(513 * t.cost("23"))
    scaled = t.scaled({"23": 2.0})
    assert scaled.cost("24") == pytest.approx(2 * t.cost("24"))  # the derivation follows its input
    assert not t.is_assumed("24") and not t.is_assumed("36")
    assert t.is_assumed("9") and t.is_assumed("26")


def test_weights_follow_section4():
    t = CostTable()
    assert t.row("6").weight == pytest.approx(46_475_980 / 3000) and t.row("6").tag == "pub"
    # row 12 from Michael Roth's 1G split (262,144 filemap stores in 46,475,980 cycles), two passes per page
    assert t.row("12").weight == pytest.approx(2 * 177.3 / 3000, rel=1e-3) and t.row("26").weight == 20
    assert t.row("7").weight == 64.5 and t.row("8").weight == 49.7  # HVO restore / optimize (Kravetz)
    assert t.cost("27", vcpus=16) == pytest.approx(2 + 0.83 * 16)
    assert t.cost("18a", vcpus=248) == t.cost("27", vcpus=248)
    assert t.cost("18", vcpus=16) == 50 + 2 * 16


def _one(counters, vcpus=16, segment="boot", lane="serial"):
    ledger = new_ledger()
    ledger[segment][lane].update(counters)
    return compute(ledger, {}, CostTable(), vcpus)


def test_cpu_time_by_category():
    t = _one({"split_1g_4k": 2, "merge_4k_1g": 1, "userspace_exit": 16_384, "psc_vmgexit": 16_384,
              "tlb_flush_remote": 3, "pvalidate_2m": 32_768, "attr_xarray_pages": 0, "made_up": 5})
    six = CostTable().cost("6")
    assert set(t.cpu_by_category) == set(CATEGORIES)
    assert t.cpu_by_category["split_merge"].seconds == pytest.approx(3 * six / 1e6)
    assert t.cpu_by_category["exits"].seconds == pytest.approx(16_384 * (20 + 3) / 1e6)
    assert t.cpu_by_category["exits"].assumed_share == 1.0
    assert t.cpu_by_category["split_merge"].assumed_share == 0.0
    assert t.cpu_by_category["tlb"].seconds == pytest.approx(3 * (2 + 0.83 * 16) / 1e6)
    assert t.cpu_by_category["accept"].seconds == pytest.approx(32_768 * 3.4 / 1e6)
    assert t.cpu_by_row["6"] == pytest.approx(3 * six / 1e6)
    assert t.unpriced == ("made_up",)
    assert t.cpu.seconds == pytest.approx(sum(f.seconds for f in t.cpu_by_category.values()))


def test_section6_times():
    pages_64g = 64 * GiB // 4096
    # SET_ATTR(all) with the xarray: >= 1.6 s for 64 GiB, >= 26 s for 1 TiB (§6, row 12)
    assert _one({"attr_xarray_pages": pages_64g}).cpu.seconds == pytest.approx(1.98, abs=0.01)
    assert _one({"attr_xarray_pages": 16 * pages_64g}).cpu.seconds == pytest.approx(31.7, abs=0.1)
    # TDX full accept at 4K S-EPT: 16,777,216 x 8 µs ~ 134 s (row 16)
    assert _one({"tdx_accept_4k": pages_64g}).cpu.seconds == pytest.approx(134, abs=0.3)


def test_overrides(tmp_path):
    path = tmp_path / "costs.toml"
    path.write_text('[rows.6]\nweight = 2.2e4\ntag = "measured"\nbasis = "my box"\n[rows.27]\nper_vcpu = 1\n')
    table = load_cost_table(path)
    assert (table.row("6").weight, table.row("6").tag, table.row("6").basis) == (2.2e4, "measured", "my box")
    assert table.cost("27", vcpus=4) == 2 + 4
    assert table.row("7") == CostTable().row("7")  # untouched
    assert str(path) in table.source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[rows.6\nweight = 1\n", "invalid TOML"),
        ("[rows.66]\nweight = 1\n", "rows.66: no such cost row (did you mean '6'?)"),
        ("[rows.6]\nwieght = 1\n", "rows.6.wieght: unknown key (did you mean 'weight'?)"),
        ("[rows.6]\nweight = -1\n", "rows.6.weight: must be at least 0.0"),
        ("[rows.6]\nweight = \"fast\"\n", "rows.6.weight: expected a number"),
        ("[rows.6]\ntag = \"guess\"\n", "rows.6.tag: 'guess' is not one of"),
        ("[rows.11]\nweight = 3\n", "rows.11.weight: this row is informational"),
        ("[weights]\n", "weights: unknown key (expected one of: rows)"),
    ],
)
def test_bad_overrides(tmp_path, text, message):
    path = tmp_path / "costs.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_cost_table(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_missing_override_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        load_cost_table(tmp_path / "nope.toml")


@pytest.mark.parametrize("phase, running", [("launch", 0), ("firmware", 16), ("runtime", 16), ("teardown", 0)])
def test_a_kick_reaches_only_the_vcpus_in_guest_mode(phase, running):
    """A remote TLB flush IPIs the vCPUs in guest mode: none while the VMM builds the VM or when it is
    destroyed (every vCPU file holds a reference to the VM), all of them in between."""
    ledger = new_ledger()
    ledger[phase]["serial"]["tlb_flush_remote"] = 1_000
    t = compute(ledger, {}, CostTable(), vcpus=16)
    assert t.cpu_by_phase[phase].seconds == pytest.approx(1_000 * (2 + 0.83 * running) / 1e6)
