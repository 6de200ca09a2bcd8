"""Property tests: random conversions, guest and host faults, pins and punches under every policy.

After every step the model's invariants hold (``check_invariants``: the host never maps a private page;
stage-2 leaves are aligned and never span memory whose private/shared state is not uniform; folio
shapes agree with the split/merge counters and vmemmap; the policy's own rule). On the same sequence
the deferred policy never splits more folios than eager (same split staging).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmemlab.errors import ConversionError, HostSigbus, KvmError, VcpuExit
from gmemlab.model.policy import POLICIES
from gmemlab.uapi import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE

from .helpers import G1, GPA, M2, Env, P, make, splits

KEEP = FALLOC_FL_KEEP_SIZE
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

# Files: two 1 GiB pages, or eight 2 MiB pages. Offsets are drawn on a grid fine enough to make 4K,
# 2M-straddling and whole-huge-page ranges.
GEOMETRIES = {"1G": (G1, 2), "2M": (M2, 8)}


def _offset(size: int) -> st.SearchStrategy[int]:
    grid = st.sampled_from([P, 64 * P, M2, 3 * M2, G1 // 4])
    return st.tuples(grid, st.integers(0, 1 << 20)).map(lambda t: (t[0] * t[1]) % size)


def _ops(size: int, pins: bool) -> st.SearchStrategy[list[tuple]]:
    off = _offset(size)
    length = st.sampled_from([P, 2 * P, 513 * P, M2, 2 * M2 + P, G1 // 2, G1, size])
    op = st.one_of(
        st.tuples(st.just("convert"), off, length, st.booleans()),
        st.tuples(st.just("touch"), off, st.sampled_from([P, M2, 4 * M2])),
        st.tuples(st.just("host"), off),
        st.tuples(st.just("falloc"), off, length),
        st.tuples(st.just("punch"), off, length),
        *([st.tuples(st.just("pin"), off), st.tuples(st.just("unpin"), st.integers(0, 7))] if pins else []),
    )
    return st.lists(op, min_size=4, max_size=20)


def _apply(env: Env, ops: list[tuple], pinned: list) -> list[str]:
    """Run the ops; returns the outcome of each so two policies can be compared step by step."""
    out = []
    size = env.size
    for op in ops:
        kind = op[0]
        try:
            if kind == "convert":
                _, o, n, to_shared = op
                env.gmem.convert(o, min(n, size - o), to_shared)
            elif kind == "touch":
                _, o, n = op
                o -= o % P
                env.cpu.touch(GPA + o, min(n, size - o))
            elif kind == "host":
                env.mapping.write(op[1], b"h")
            elif kind == "falloc":
                _, o, n = op
                env.gmem.fallocate(KEEP, o, min(n, size - o))
            elif kind == "punch":
                _, o, n = op
                env.gmem.fallocate(PUNCH, o, n)
            elif kind == "pin":
                pinned.append(env.mapping.pin(op[1], P))
            elif kind == "unpin" and pinned:
                pinned.pop(op[1] % len(pinned)).unpin()
            out.append("ok")
        except (ConversionError, KvmError, HostSigbus, VcpuExit) as exc:
            out.append(type(exc).__name__ + str(getattr(exc, "errno", "")))
        env.backend.check_invariants()
    return out


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.data())
def test_invariants_hold_under_every_policy(data: st.DataObject) -> None:
    geometry = data.draw(st.sampled_from(sorted(GEOMETRIES)))
    ps, n = GEOMETRIES[geometry]
    ops = data.draw(_ops(ps * n, pins=True))
    init_private = data.draw(st.booleans())
    default_private = data.draw(st.booleans())
    prepare = data.draw(st.sampled_from(["folio", "per-4k", "guest-prepared"]))
    for name in POLICIES:
        env = make(name, ps=ps, nblocks=n, init_private=init_private, default_private=default_private,
                   gmem_prepare=prepare)
        pinned: list = []
        _apply(env, ops, pinned)
        for pin in pinned:
            pin.unpin()
        env.mapping.munmap()
        env.gmem.close()
        env.backend.check_invariants()
        pool = env.backend.hugetlb_pool
        assert pool.free == pool.total, f"{name}: HugeTLB pages leaked"


@SETTINGS
@given(data=st.data())
def test_deferred_never_splits_more_than_eager(data: st.DataObject) -> None:
    geometry = data.draw(st.sampled_from(sorted(GEOMETRIES)))
    ps, n = GEOMETRIES[geometry]
    ops = data.draw(_ops(ps * n, pins=False))
    init_private = data.draw(st.booleans())
    for eager, deferred in (("eager", "deferred+direct"), ("eager+staged", "deferred"),
                            ("eager+merge-never", "deferred+direct")):
        a = make(eager, ps=ps, nblocks=n, init_private=init_private)
        b = make(deferred, ps=ps, nblocks=n, init_private=init_private)
        outcome_a = _apply(a, ops, [])
        outcome_b = _apply(b, ops, [])
        assert outcome_a == outcome_b  # without pins the policies accept the same calls
        assert splits(b.metrics()) <= splits(a.metrics()), (eager, deferred, a.metrics()["splits"],
                                                            b.metrics()["splits"])
