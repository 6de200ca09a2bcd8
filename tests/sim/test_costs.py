"""The §4 cost table: rows, sources, counters -> modelled time, overrides (workloads.md §4, §6)."""

from __future__ import annotations

import pytest

from gmemlab.errors import UsageError
from gmemlab.sim.costs import CATEGORIES, TAGS, CostTable, load_cost_table, memory_overhead_bytes
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
        assert row.tag in TAGS and row.category in CATEGORIES and row.unit and row.operation
        assert (row.weight is None) == (not row.counters), row.id


def test_weights_follow_section4():
    t = CostTable()
    assert t.row("6").weight == 1.5e4 and t.row("6").tag == "pub"
    assert t.row("12").weight == 0.1 and t.row("26").weight == 20
    assert t.row("24").weight == pytest.approx(512 * t.row("23").weight)
    assert t.row("27").cost(vcpus=16) == 2 + 0.5 * 16
    assert t.row("18").cost(vcpus=16) == 50 + 2 * 16


def test_modelled_time_by_category():
    result = CostTable().modelled_time(
        {"split_1g_4k": 2, "merge_4k_1g": 1, "userspace_exit": 16_384, "psc_vmgexit": 16_384, "tlb_flush_remote": 3,
         "pvalidate_2m": 32_768, "attr_xarray_pages": 0, "made_up": 5},
        vcpus=16,
    )
    assert set(result.by_category) == set(CATEGORIES)
    assert result.by_category["split_merge"] == 3 * 1.5e4
    assert result.by_category["exits"] == 16_384 * (20 + 3)
    assert result.by_category["tlb"] == 3 * (2 + 0.5 * 16)
    assert result.by_category["accept"] == pytest.approx(32_768 * 3.4)
    assert result.by_row["6"] == 3 * 1.5e4
    assert result.unpriced == ("made_up",)
    assert result.total_us == pytest.approx(sum(result.by_category.values()))


def test_section6_times():
    t = CostTable()
    pages_64g = 64 * GiB // 4096
    # SET_ATTR(all) with the xarray: >= 1.6 s for 64 GiB, >= 26 s for 1 TiB (row 12)
    assert t.modelled_time({"attr_xarray_pages": pages_64g}).total_us / 1e6 == pytest.approx(1.68, abs=0.01)
    assert t.modelled_time({"attr_xarray_pages": 1024 * pages_64g // 64}).total_us / 1e6 >= 26
    # TDX full accept at 4K S-EPT: 16,777,216 x 8 µs ~ 134 s (row 16)
    assert t.modelled_time({"tdx_accept_4k": pages_64g}).total_us / 1e6 == pytest.approx(134, abs=0.3)
    # vmemmap growth if all 64 1G folios are split: ~1 GiB (row 6m)
    assert memory_overhead_bytes({"folios_1g_split": 64}) == 64 * 4095 * 4096
    assert memory_overhead_bytes({"s2_leaves_4k": 512}) == 4096  # 4 KiB of table per 2 MiB at 4K


def test_overrides(tmp_path):
    path = tmp_path / "costs.toml"
    path.write_text('[rows.6]\nweight = 2.2e4\ntag = "measured"\nbasis = "my box"\n[rows.27]\nper_vcpu = 1\n')
    table = load_cost_table(path)
    assert (table.row("6").weight, table.row("6").tag, table.row("6").basis) == (2.2e4, "measured", "my box")
    assert table.row("27").cost(vcpus=4) == 2 + 4
    assert table.row("7").weight == 40  # untouched
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
