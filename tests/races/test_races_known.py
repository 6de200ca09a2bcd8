"""The known races are found, with minimal traces of a known length; the variants that fix them pass.

Nothing here depends on timing: searches are deterministic (BFS order, seeded random schedules).
"""

from __future__ import annotations

import pytest

from gmemlab.races import BUILTIN, Explorer, Setup, explore, get_protocol, parse_threads


def run(protocol: str, threads: str, init: str = "shared", **kw):
    proto = get_protocol(protocol)
    return explore(Setup(proto, parse_threads(threads, proto), init), **kw)


def test_rfc_v2_host_fault_toctou_minimal_trace():
    """§5.9: the shareability check is made under invalidate_lock, the PTE is installed after it is dropped."""
    result = run("rfc-v2", "host_fault:0,convert_private:0")
    v = result.violation
    assert v is not None and v.prop == "host_maps_private"
    assert len(v.trace) == 12
    assert v.preemptions == 2
    labels = [t.label for t in v.trace]
    assert labels[0].endswith("down_read(invalidate_lock)")
    assert "read shareability[0] -> shared" in labels[1]
    # the conversion runs entirely between the host fault's unlock and its finish_fault()
    assert [t.thread for t in v.trace] == [0] * 6 + [1] * 5 + [0]
    assert labels[6].endswith("down_write(invalidate_lock)")
    assert labels[10].endswith("store shareability[0] = private")
    assert "finish_fault: install host PTE" in labels[11]
    assert result.complete


def test_rfc_v2_toctou_with_other_threads_keeps_minimal_length():
    for threads in ("host_fault:0,convert_private:0,guest_fault:0",
                    "host_fault:0,guest_fault:0,convert_private:0,punch_hole:0",
                    "allocate:0,host_fault:0,convert_private:0"):
        v = run("rfc-v2", threads).violation
        assert v is not None and v.prop == "host_maps_private" and len(v.trace) == 12, threads
    v = run("rfc-v2", "guest_fault:0,convert_private:0-1,host_fault:1").violation
    assert v is not None and v.prop == "host_maps_private" and len(v.trace) == 14


def test_roth_allocating_path_without_read_lock():
    """Roth's warning: a path that may allocate a folio must hold the read lock, or a conversion that saw
    no folio (and so locked none) is overtaken by the allocation."""
    v = run("roth-noread", "host_fault:0,convert_private:0").violation
    assert v is not None and v.prop == "allocation_escapes_conversion"
    assert len(v.trace) == 5
    assert [t.thread for t in v.trace] == [1, 1, 1, 1, 0]
    assert "filemap_get_folio(0) -> 0" in v.trace[3].label
    assert "filemap_grab_folio(0)" in v.trace[4].label


def test_same_race_from_any_allocating_path_in_roth():
    proto = BUILTIN["roth"]
    for site, threads, length in (
        ("allocate.gmem_rwsem", "allocate:0,convert_private:0", 6),
        ("get_pfn.gmem_rwsem", "guest_fault:0,convert_private:0", 9),
        ("populate.gmem_rwsem", "populate:0,convert_shared:0", 7),
    ):
        setup = Setup(proto, parse_threads(threads, proto), "shared" if "private" in threads else "private",
                      frozenset({site}))
        v = Explorer(setup).exhaustive().violation
        assert v is not None and v.prop == "allocation_escapes_conversion", site
        assert len(v.trace) == length, (site, len(v.trace))
        assert "filemap_get_folio(0) -> 0" in v.trace[-2].label and v.trace[-1].thread == 0


@pytest.mark.parametrize("fixed", ["rfc-v2-refcount", "linux-7.4", "roth"])
def test_fixed_variants_pass_the_race_configurations(fixed):
    for threads in ("host_fault:0,convert_private:0", "host_fault:0,convert_private:0,guest_fault:0",
                    "allocate:0,host_fault:0,convert_private:0"):
        result = run(fixed, threads)
        assert result.violation is None and result.complete, (fixed, threads)


def test_refcount_check_turns_the_race_into_eagain():
    """With the strict refcount check the racing conversion fails with EAGAIN instead."""
    result = run("rfc-v2-refcount", "host_fault:0,convert_private:0")
    assert result.violation is None
    assert any("T0=mapped T1=EAGAIN" in k for k in result.outcomes)


def test_preemption_bound():
    assert run("rfc-v2", "host_fault:0,convert_private:0", preemption_bound=0).violation is None
    v = run("rfc-v2", "host_fault:0,convert_private:0", preemption_bound=1).violation
    assert v is not None and v.prop == "host_maps_private"
    assert v.preemptions == 1 and len(v.trace) == 14  # the conversion runs to completion first


def test_random_mode_is_reproducible_and_minimized():
    threads = "host_fault:0,convert_private:0,guest_fault:0,punch_hole:0,allocate:0"
    first = run("rfc-v2", threads, random_runs=200, seed=2)
    again = run("rfc-v2", threads, random_runs=200, seed=2)
    assert first.violation is not None and again.violation is not None
    assert [t.label for t in first.violation.trace] == [t.label for t in again.violation.trace]
    assert first.states == again.states and first.transitions == again.transitions
    assert first.violation.prop == "host_maps_private"
    assert len(first.violation.trace) == 12  # as short as the exhaustive search's trace


def test_roth_noread_consequence_is_a_private_host_mapping():
    """Looking past the ghost property: the escaped allocation ends with the host mapping a private page."""
    proto = BUILTIN["roth-noread"]
    setup = Setup(proto, parse_threads("host_fault:0,convert_private:0", proto), "shared")
    v = Explorer(setup, ignore=frozenset({"allocation_escapes_conversion"})).exhaustive().violation
    assert v is not None and v.prop == "host_maps_private"
    assert len(v.trace) == 11
    assert [t.thread for t in v.trace] == [1] * 5 + [0] * 5 + [1]


def test_linux_7_4_reference_check_closes_the_host_fault_toctou():
    """Without the reference check after the unmap, in-place conversion has RFC v2's TOCTOU (§5.9)."""
    result = run("linux-7.4-norefcheck", "host_fault:0,convert_private:0")
    assert result.violation is not None and result.violation.prop == "host_maps_private"
    assert len(result.violation.trace) == 12
    assert run("linux-7.4", "host_fault:0,convert_private:0").violation is None


def test_gmem_convert_fault_race_sees_eagain_and_no_violation():
    """The selftest's pattern: conversions succeed or fail with EAGAIN; no stale mapping, no host mapping of
    private memory in any interleaving."""
    from gmemlab.races.protocols import FAULT_RACE

    result = run("linux-7.4", FAULT_RACE.threads, FAULT_RACE.init)
    assert result.violation is None and result.complete
    joined = " | ".join(result.outcomes)
    assert "private: EAGAIN" in joined and "private: 0" in joined and "mapped private" in joined
