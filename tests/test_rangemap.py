"""RangeMap against a naive per-index model, plus edge cases, a huge-limit cost check and a bench smoke test.

Most properties run twice: with the shipped bucket sizing and with tiny buckets (``_TARGET = 1``), so that
small limits still exercise many buckets, continuations across bucket boundaries and table rebuilds.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import gmemlab.rangemap as rangemap_mod
from gmemlab.rangemap import RangeMap

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 48


@contextmanager
def bucket_target(target: int | None) -> Iterator[None]:
    """Run with ``_TARGET`` set to ``target`` (None: leave the shipped value)."""
    saved = rangemap_mod._TARGET
    if target is not None:
        rangemap_mod._TARGET = target
    try:
        yield
    finally:
        rangemap_mod._TARGET = saved


class Model:
    """The naive oracle: one dict entry per index."""

    def __init__(self, limit: int, default: int) -> None:
        self.limit = limit
        self.d = dict.fromkeys(range(limit), default)

    def store(self, start: int, end: int, value: int) -> None:
        for i in range(max(start, 0), min(end, self.limit)):
            self.d[i] = value

    def runs(self, start: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
        end = self.limit if end is None else min(end, self.limit)
        out: list[tuple[int, int, int]] = []
        for i in range(max(start, 0), end):
            v = self.d[i]
            if out and out[-1][2] == v and out[-1][1] == i:
                out[-1] = (out[-1][0], i + 1, v)
            else:
                out.append((i, i + 1, v))
        return out

    def differing(self, start: int, end: int, target: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for i in range(max(start, 0), min(end, self.limit)):
            if self.d[i] != target:
                if out and out[-1][1] == i:
                    out[-1] = (out[-1][0], i + 1)
                else:
                    out.append((i, i + 1))
        return out


def assert_same(m: RangeMap[int], model: Model) -> None:
    m.check()
    assert [m.load(i) for i in range(model.limit)] == [model.d[i] for i in range(model.limit)]
    assert list(m.runs()) == model.runs()
    assert m.nr_runs() == len(model.runs())


# -- properties against the model -------------------------------------------------------------------
bounds = st.integers(min_value=-3, max_value=LIMIT + 3)
values = st.integers(min_value=0, max_value=3)
op = st.one_of(
    st.tuples(st.just("store"), bounds, bounds, values),
    st.tuples(st.just("update"), bounds, bounds, st.integers(min_value=-1, max_value=1)),
)


@pytest.mark.parametrize("target", [None, 1, 2])
@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op, max_size=40), queries=st.lists(st.tuples(bounds, bounds, values), max_size=8))
def test_matches_model(target: int | None, ops: list[tuple[str, int, int, int]], queries: list) -> None:
    with bucket_target(target):
        m: RangeMap[int] = RangeMap(LIMIT, 0)
        model = Model(LIMIT, 0)
        for kind, start, end, x in ops:
            if kind == "store":
                if start < end and (start < 0 or end > LIMIT):
                    with pytest.raises(IndexError):
                        m.store(start, end, x)
                    continue
                m.store(start, end, x)
                model.store(start, end, x)
            else:
                lo, hi = max(start, 0), min(end, LIMIT)
                m.update(start, end, lambda v, x=x: (v + x) % 4)
                for i in range(lo, hi):
                    model.d[i] = (model.d[i] + x) % 4
            assert_same(m, model)
        for start, end, target_value in queries:
            assert list(m.runs(start, end)) == model.runs(start, end)
            assert m.differing(start, end, target_value) == model.differing(start, end, target_value)
            assert m.all_equal(start, end, target_value) == (not model.differing(start, end, target_value))
            pred: Callable[[int], bool] = lambda v, t=target_value: v >= t  # noqa: E731
            want = sum(1 for i in range(max(start, 0), min(end, LIMIT)) if pred(model.d[i]))
            assert m.count(start, end, pred) == want
            assert m.any_match(start, end, pred) == (want > 0)
            first = next((i for i in range(max(start, 0), min(end, LIMIT)) if pred(model.d[i])), None)
            assert m.first_match(start, end, pred) == first


@settings(max_examples=60, deadline=None)
@given(
    stores=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 40), st.integers(0, 2)), min_size=50, max_size=300)
)
def test_many_runs_rebuild_and_shrink(stores: list[tuple[int, int, int]]) -> None:
    """Enough runs for several table rebuilds, then one store that collapses the map to one run."""
    limit = 4096
    with bucket_target(2):
        m: RangeMap[int] = RangeMap(limit, 0)
        model = Model(limit, 0)
        for start, length, v in stores:
            end = min(limit, start + length)
            m.store(start, end, v)
            model.store(start, end, v)
        m.check()
        assert list(m.runs()) == model.runs()
        m.store(0, limit, 7)
        m.check()
        assert list(m.runs()) == [(0, limit, 7)]
        # Memory follows runs: the table shrinks once runs per bucket fall below _TARGET / _SHRINK, so with
        # this test's tiny target a single run may keep a handful of buckets, never hundreds.
        assert len(m._bs) <= 4


class RangeMapMachine(RuleBasedStateMachine):
    """Random interleavings of stores, updates and queries, checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.m: RangeMap[int] = RangeMap(1, 0)
        self.model = Model(1, 0)
        self.saved_target = rangemap_mod._TARGET

    @initialize(limit=st.integers(1, 70), default=values, bucket=st.sampled_from([1, 2, 16]))
    def setup(self, limit: int, default: int, bucket: int) -> None:
        rangemap_mod._TARGET = bucket
        self.m = RangeMap(limit, default)
        self.model = Model(limit, default)

    def teardown(self) -> None:
        rangemap_mod._TARGET = self.saved_target

    @rule(data=st.data(), value=values)
    def store(self, data: st.DataObject, value: int) -> None:
        limit = self.model.limit
        start = data.draw(st.integers(0, limit))
        end = data.draw(st.integers(start, limit))
        self.m.store(start, end, value)
        self.model.store(start, end, value)

    @rule(data=st.data())
    def store_one(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, self.model.limit - 1))
        v = (self.model.d[i] + 1) % 4  # flip one index: fragments the map
        self.m.store(i, i + 1, v)
        self.model.store(i, i + 1, v)

    @rule(data=st.data(), delta=st.integers(1, 3))
    def update(self, data: st.DataObject, delta: int) -> None:
        limit = self.model.limit
        start = data.draw(st.integers(0, limit))
        end = data.draw(st.integers(start, limit))
        self.m.update(start, end, lambda v: (v + delta) % 4)
        for i in range(start, end):
            self.model.d[i] = (self.model.d[i] + delta) % 4

    @rule(data=st.data(), wanted=values)
    def query(self, data: st.DataObject, wanted: int) -> None:
        limit = self.model.limit
        start = data.draw(st.integers(-2, limit + 2))
        end = data.draw(st.integers(-2, limit + 2))
        assert list(self.m.runs(start, end)) == self.model.runs(start, end)
        assert self.m.differing(start, end, wanted) == self.model.differing(start, end, wanted)

    @precondition(lambda self: self.model.limit > 0)
    @rule(data=st.data())
    def load(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, self.model.limit - 1))
        assert self.m.load(i) == self.m[i] == self.model.d[i]

    @invariant()
    def consistent(self) -> None:
        assert_same(self.m, self.model)


TestRangeMapMachine = RangeMapMachine.TestCase
TestRangeMapMachine.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)


# -- edge cases -------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [1, 2, 3, 16, 17, 1 << 28, (1 << 64) - 1, 1 << 64, (1 << 64) + 1])
def test_new_map_has_the_rebuilt_layout(limit: int) -> None:
    """__init__ lays one run out directly (bench/convert.py); it must be exactly what _rebuild makes."""
    m: RangeMap[str] = RangeMap(limit, "x")
    rebuilt: RangeMap[str] = RangeMap(limit, "x")
    rebuilt._rebuild([0], ["x"])
    for slot in RangeMap.__slots__:
        assert getattr(m, slot) == getattr(rebuilt, slot), slot
    assert [type(x) for x in m._bs] == [type(x) for x in rebuilt._bs]
    m.check()
    assert m.first_match(0, limit, lambda v: v == "x") == 0 and m.first_match(0, limit, lambda v: v == "y") is None
    assert m.differing(0, limit, "y") == [(0, limit)] and m.differing(0, limit, "x") == []


def test_new_map_is_one_run() -> None:
    m = RangeMap(10, "private")
    m.check()
    assert m.nr_runs() == 1
    assert list(m.runs()) == [(0, 10, "private")]
    assert m.load(0) == m.load(9) == m[5] == "private"


@pytest.mark.parametrize("limit", [0, -1, -(2**40)])
def test_non_positive_limit_raises(limit: int) -> None:
    with pytest.raises(ValueError):
        RangeMap(limit, 0)


def test_out_of_range_raises() -> None:
    m = RangeMap(16, 0)
    for i in (-1, 16, 17, -(2**70), 2**70):
        with pytest.raises(IndexError):
            m.load(i)
        with pytest.raises(IndexError):
            m[i]
    for start, end in ((-1, 4), (10, 17), (-5, 20), (16, 17)):
        with pytest.raises(IndexError):
            m.store(start, end, 1)
    m.check()
    assert m.nr_runs() == 1


def test_empty_ranges_are_no_ops() -> None:
    m = RangeMap(16, 0)
    for start, end in ((5, 5), (7, 3), (16, 16), (0, 0), (40, 40), (-3, -3), (20, 10)):
        m.store(start, end, 1)  # empty: neither stored nor range-checked
        assert list(m.runs(start, end)) == []
        assert m.differing(start, end, 1) == []
        assert m.all_equal(start, end, 9)
        assert not m.any_match(start, end, lambda v: True)
        assert m.count(start, end, lambda v: True) == 0
    m.check()
    assert list(m.runs()) == [(0, 16, 0)]


def test_store_at_zero_and_at_limit() -> None:
    m = RangeMap(16, 0)
    m.store(0, 1, 1)
    assert list(m.runs()) == [(0, 1, 1), (1, 16, 0)]
    m.store(15, 16, 1)
    assert list(m.runs()) == [(0, 1, 1), (1, 15, 0), (15, 16, 1)]
    m.store(1, 15, 1)  # fills the gap: everything coalesces
    assert list(m.runs()) == [(0, 16, 1)]
    assert m.nr_runs() == 1
    m.check()


def test_full_range_store_and_coalescing() -> None:
    m = RangeMap(100, 0)
    for i in range(0, 100, 2):
        m.store(i, i + 1, 1)
    assert m.nr_runs() == 100
    assert m.count(0, 100, lambda v: v == 1) == 50
    assert m.differing(10, 15, 0) == [(10, 11), (12, 13), (14, 15)]
    m.store(0, 100, 0)
    m.check()
    assert list(m.runs()) == [(0, 100, 0)]


def test_runs_clip_and_repr() -> None:
    m = RangeMap(20, "a")
    m.store(5, 10, "b")
    assert list(m.runs(7, 12)) == [(7, 10, "b"), (10, 12, "a")]
    assert list(m.runs(-5, 100)) == [(0, 5, "a"), (5, 10, "b"), (10, 20, "a")]
    assert list(m.runs(12)) == [(12, 20, "a")]
    assert m.all_equal(5, 10, "b") and not m.all_equal(4, 10, "b")
    assert "RangeMap(limit=0x14" in repr(m)
    for i in range(0, 20, 2):
        m.store(i, i + 1, str(i))
    assert repr(m).endswith(f"... {m.nr_runs()} runs)")


def test_unhashable_values_and_copies() -> None:
    m: RangeMap[list[int]] = RangeMap(50, [])
    m.store(10, 20, [1])
    m.store(20, 30, [1])  # equal (not identical) neighbours coalesce
    assert list(m.runs()) == [(0, 10, []), (10, 30, [1]), (30, 50, [])]
    m.check()
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        clone.check()
        assert list(clone.runs()) == list(m.runs())
        clone.store(0, 50, [2])
        assert m.load(0) == []


# -- cost follows runs, not indices -----------------------------------------------------------------
def test_huge_limit_costs_runs_not_indices() -> None:
    limit = 2**40
    m = RangeMap(limit, "private")
    assert len(m._bs) == 1 and len(m._bs[0]) == 1  # one run, one bucket, one entry
    m.store(0, limit, "shared")
    m.store(2**39, 2**39 + 512, "private")
    m.store(limit - 1, limit, "private")
    m.store(12345, 2**38, "private")
    m.check()
    assert m.nr_runs() == 6
    assert m.count(0, limit, lambda v: v == "private") == 512 + 1 + (2**38 - 12345)
    assert m.differing(0, limit, "shared") == [(12345, 2**38), (2**39, 2**39 + 512), (limit - 1, limit)]
    assert m.load(limit - 1) == "private" and m.load(2**39 - 1) == "shared"
    # A thousand scattered runs keep the table small: buckets stay well below the run count.
    for k in range(1000):
        s = (k * 0x9E3779B97F4A7C15) % (limit - 8)
        m.store(s, s + 4, k % 3)
    m.check()
    assert m.nr_runs() <= 2 * 1000 + 5
    assert len(m._bs) <= m.nr_runs()
    assert sum(len(b) for b in m._bs) <= 2 * m.nr_runs()
    m.store(0, limit, "private")
    assert m.nr_runs() == 1 and len(m._bs) == 1


@pytest.mark.parametrize("limit", [2**64, 2**64 + 1, 2**70])
def test_64_bit_and_beyond(limit: int) -> None:
    """Up to 2**64 starts are packed in unsigned 64-bit arrays; past it they are lists of ints."""
    step = limit // 256
    m = RangeMap(limit, 0)
    with bucket_target(1):
        for k in range(200):
            m.store(k * step, k * step + 3, 1 + k % 2)
        m.check()
        assert m.nr_runs() == 400
        assert all(isinstance(starts, array) == (limit <= 2**64) for starts in m._bs)
        assert m.load(5 * step + 2) == 2 and m.load(limit - 1) == 0
        m.store(limit - 2, limit, 3)
        m.store(0, 2, 3)
        m.check()
        assert list(m.runs(limit - 5)) == [(limit - 5, limit - 2, 0), (limit - 2, limit, 3)]
        assert m.load(limit - 1) == 3 and m.load(1) == 3


# -- the benchmark cannot rot -----------------------------------------------------------------------
def test_bench_smoke() -> None:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "rangemap.py"),
        "--json",
        "--bits",
        "20",
        "--stores",
        "300",
        "--loads",
        "500",
        "--repeat",
        "1",
        "--budget",
        "0.2",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    doc = json.loads(out.stdout)
    names = {r["name"] for r in doc["results"]}
    assert {"RangeMap", "bisect-list"} <= names
    for r in doc["results"]:
        assert r["stores_per_s"] > 0 and r["loads_per_s"] > 0
        if not r["notes"]:  # complete runs were verified by the bench; they agree on the run count
            assert r["runs"] == doc["workload"]["runs"]
    assert "stores_per_s" in doc["targets"]
