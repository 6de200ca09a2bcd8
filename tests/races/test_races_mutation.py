"""Mutation check: removing any single lock acquisition from a safe variant is either detected or shown
harmless, and the verdicts match the table in docs/races.md.

Values: None = harmless at the documented configurations; else (first property violated, length of its
minimal trace, and — for detections by the ghost property allocation_escapes_conversion — the property that
breaks next when the escape is ignored, "none" if nothing does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gmemlab.races import BUILTIN
from gmemlab.races.mutation import mutation_check
from gmemlab.races.protocols import sweep_configs

EXPECTED = {
    "linux-6.18": {
        "allocate.folio_lock": None,
        "allocate.invalidate_lock": None,
        "convert.mmu_lock": ('stale_guest_mapping', 15, None),
        "convert.slots_lock": ('prepared_inconsistent', 10, None),
        "get_pfn.folio_lock": ('prepared_inconsistent', 10, None),
        "guest_fault.mmu_lock": ('mapping_of_freed_folio', 13, None),
        "host_fault.folio_lock": ('prepared_inconsistent', 9, None),
        "populate.folio_lock": ('prepared_inconsistent', 11, None),
        "populate.invalidate_lock": None,
        "populate.slots_lock": ('prepared_inconsistent', 10, None),
        "punch_hole.folio_lock": ('prepared_inconsistent', 8, None),
        "punch_hole.invalidate_lock": None,
        "punch_hole.mmu_lock": ('mapping_of_freed_folio', 14, None),
    },
    "rfc-v2-refcount": {
        "allocate.folio_lock": None,
        "allocate.invalidate_lock": ('allocation_escapes_conversion', 5, 'none'),
        "convert.invalidate_lock": ('allocation_escapes_conversion', 5, 'prepared_inconsistent'),
        "convert.mmu_lock": ('stale_guest_mapping', 16, None),
        "get_pfn.folio_lock": ('prepared_inconsistent', 12, None),
        "get_pfn.invalidate_lock": ('allocation_escapes_conversion', 7, 'none'),
        "guest_fault.mmu_lock": ('stale_guest_mapping', 15, None),
        "host_fault.folio_lock": ('prepared_inconsistent', 11, None),
        "host_fault.invalidate_lock": ('allocation_escapes_conversion', 6, 'host_maps_private'),
        "populate.folio_lock": None,
        "populate.invalidate_lock": ('prepared_inconsistent', 9, None),
        "populate.slots_lock": None,
        "punch_hole.folio_lock": ('prepared_inconsistent', 10, None),
        "punch_hole.invalidate_lock": None,
        "punch_hole.mmu_lock": ('mapping_of_freed_folio', 16, None),
    },
    "roth": {
        "allocate.folio_lock": None,
        "allocate.gmem_rwsem": ('allocation_escapes_conversion', 6, 'none'),
        "allocate.invalidate_lock": None,
        "convert.folio_lock": ('host_maps_private', 13, None),
        "convert.gmem_rwsem": ('allocation_escapes_conversion', 5, 'prepared_inconsistent'),
        "convert.mmu_lock": ('stale_guest_mapping', 23, None),
        "get_pfn.folio_lock": ('prepared_inconsistent', 14, None),
        "get_pfn.gmem_rwsem": ('allocation_escapes_conversion', 9, 'prepared_inconsistent'),
        "guest_fault.mmu_lock": ('mapping_of_freed_folio', 18, None),
        "host_fault.folio_lock": ('prepared_inconsistent', 11, None),
        "host_fault.gmem_rwsem": ('allocation_escapes_conversion', 5, 'host_maps_private'),
        "is_private.gmem_rwsem": None,
        "populate.folio_lock": ('prepared_inconsistent', 16, None),
        "populate.gmem_rwsem": ('allocation_escapes_conversion', 7, 'prepared_inconsistent'),
        "populate.invalidate_lock": None,
        "populate.slots_lock": None,
        "punch_hole.folio_lock": ('prepared_inconsistent', 10, None),
        "punch_hole.invalidate_lock": None,
        "punch_hole.mmu_lock": ('mapping_of_freed_folio', 19, None),
    },
    "linux-7.4": {
        "allocate.folio_lock": None,
        "allocate.invalidate_lock": ('allocation_escapes_conversion', 4, 'none'),
        "convert.invalidate_lock": ('allocation_escapes_conversion', 4, 'prepared_inconsistent'),
        "convert.mmu_lock": ('stale_guest_mapping', 19, None),
        "get_pfn.folio_lock": ('prepared_inconsistent', 12, None),
        "get_pfn.invalidate_lock": ('allocation_escapes_conversion', 6, 'prepared_inconsistent'),
        "guest_fault.mmu_lock": ('mapping_of_freed_folio', 16, None),
        "host_fault.folio_lock": ('prepared_inconsistent', 11, None),
        "host_fault.invalidate_lock": ('allocation_escapes_conversion', 5, 'host_maps_private'),
        "populate.folio_lock": None,
        "populate.invalidate_lock": ('prepared_inconsistent', 9, None),
        "populate.slots_lock": None,
        "punch_hole.folio_lock": ('prepared_inconsistent', 10, None),
        "punch_hole.invalidate_lock": None,
        "punch_hole.mmu_lock": ('mapping_of_freed_folio', 17, None),
    },
}

DOC = Path(__file__).resolve().parents[2] / "docs" / "races.md"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_mutation_table(name):
    baseline, mutants = mutation_check(BUILTIN[name])
    assert all(r.violation is None and r.complete for r in baseline)
    got = {m.site: ((m.prop, m.steps, m.consequence or None) if m.detected else None) for m in mutants}
    assert got == EXPECTED[name]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_docs_list_every_mutant(name):
    """docs/races.md has a row for every site with the same verdict."""
    text = DOC.read_text()
    section = text.split(f"### Mutation check: {name}\n", 1)[1].split("\n### ", 1)[0]
    for site, verdict in EXPECTED[name].items():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{site}` |")), None)
        assert row is not None, f"{name}: no row for {site}"
        if verdict is None:
            assert "| harmless |" in row, row
        else:
            assert f"| detected | `{verdict[0]}` ({verdict[1]})" in row, row


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_sweep_confirms_the_verdicts(name):
    """Every 2- and 3-thread single-page configuration (224) gives the same detected/harmless split."""
    proto = BUILTIN[name]
    _, mutants = mutation_check(proto, sweep_configs(proto))
    assert {m.site: m.detected for m in mutants} == {site: v is not None for site, v in EXPECTED[name].items()}
