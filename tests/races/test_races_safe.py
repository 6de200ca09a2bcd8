"""The variants declared safe pass exhaustively at every documented configuration (docs/races.md)."""

from __future__ import annotations

import pytest

from gmemlab.races import BUILTIN, Setup, explore, parse_threads

SAFE = [name for name, p in BUILTIN.items() if p.declared_safe]
CASES = [
    pytest.param(name, c.threads, c.init, id=f"{name}:{c.threads}@{c.init}",
                 marks=[pytest.mark.slow] if c in BUILTIN[name].large else [])
    for name in SAFE
    for c in (*BUILTIN[name].configs, *BUILTIN[name].large)
]


def test_declared_safety():
    assert SAFE == ["linux-6.18", "rfc-v2-refcount", "roth", "linux-7.4"]
    assert not BUILTIN["rfc-v2"].declared_safe and not BUILTIN["roth-noread"].declared_safe
    assert not BUILTIN["linux-7.4-norefcheck"].declared_safe


@pytest.mark.parametrize(("name", "threads", "init"), CASES)
def test_safe_variant_passes_exhaustively(name, threads, init):
    proto = BUILTIN[name]
    result = explore(Setup(proto, parse_threads(threads, proto), init))
    assert result.violation is None
    assert result.complete and result.mode == "exhaustive"
    assert result.states > 10
    # every thread really ran to completion in some execution
    assert result.outcomes and all(k.count("=") == len(threads.split(",")) for k in result.outcomes)


def test_unsafe_variants_fail_their_default_configuration():
    for name in ("rfc-v2", "roth-noread", "linux-7.4-norefcheck"):
        proto = BUILTIN[name]
        result = explore(Setup(proto, parse_threads(proto.default.threads, proto), proto.default.init))
        assert result.violation is not None, name


def test_safe_paths_reach_interesting_outcomes():
    """The model is not vacuously safe: faults map, retry, SIGBUS; conversions succeed; populate works."""
    proto = BUILTIN["linux-7.4"]
    r = explore(Setup(proto, parse_threads("host_fault:0,convert_private:0,guest_fault:0", proto), "shared"))
    joined = " | ".join(r.outcomes)
    for outcome in ("T0=mapped", "T0=SIGBUS", "T1=0", "T1=EAGAIN", "T2=RET_PF_RETRY", "T2=mapped private",
                    "T2=mapped shared"):
        assert outcome in joined, outcome
    r = explore(Setup(proto, parse_threads("guest_fault:0,populate:0,convert_shared:0", proto), "private"))
    joined = " | ".join(r.outcomes)
    for outcome in ("T1=1 (populated)", "T1=EINVAL"):
        assert outcome in joined, outcome
    assert "T1=EEXIST" not in joined  # 7.0 dropped the "already prepared" check (linux-7.md 0)
    before = BUILTIN["rfc-v2-refcount"]
    r = explore(Setup(before, parse_threads("guest_fault:0,populate:0,convert_shared:0", before), "private"))
    assert "T1=EEXIST" in " | ".join(r.outcomes)
