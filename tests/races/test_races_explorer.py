"""The explorer and properties on small hand-written protocols (user variants built from the primitives)."""

from __future__ import annotations

from gmemlab.races import Explorer, PathDef, Protocol, Setup, ThreadSpec, explore, parse_threads
from gmemlab.races.paths import Locking
from gmemlab.races.protocols import locking_paths
from gmemlab.races.steps import StepCtx, folio_put, read_state, store_state
from gmemlab.races.world import INVALIDATE_LOCK, PRIVATE, READ, SHARED, WRITE, World


def inverted(ctx: StepCtx, indices):
    """Takes a folio lock, then invalidate_lock: inverts the documented order."""
    (i,) = indices
    ctx.where = "bad_path"
    yield from ctx.grab_folio("bad.folio_lock", i)
    yield from ctx.lock("bad.invalidate_lock", INVALIDATE_LOCK, WRITE)
    yield from ctx.unlock("bad.invalidate_lock", INVALIDATE_LOCK, WRITE)
    yield from ctx.unlock_folio("bad.folio_lock", i)
    return "0"


def waits_forever(ctx: StepCtx, indices):
    yield from ctx.lock("w.invalidate_lock", INVALIDATE_LOCK, READ)
    yield ctx.step("wait_event(never)", lambda w, tid: None, lambda w, tid: False)
    return "0"


def double_put(ctx: StepCtx, indices):
    (i,) = indices
    gen = yield from ctx.grab_folio("dp.folio_lock", i)
    yield from ctx.unlock_folio("dp.folio_lock", i)
    yield folio_put(ctx, i, gen)
    yield folio_put(ctx, i, gen)
    return "0"


def leaks(ctx: StepCtx, indices):
    yield from ctx.lock("leak.invalidate_lock", INVALIDATE_LOCK, READ)
    return "0"


def racy_toggle(ctx: StepCtx, indices):
    """Read-modify-write of the shareability without any lock (a lost update is possible)."""
    (i,) = indices
    old = yield read_state(ctx, i)
    yield store_state(ctx, i, PRIVATE if old == SHARED else SHARED)
    return old


TOY = Protocol(
    "toy",
    "hand-written paths for tests",
    {
        "inverted": PathDef(inverted, "lock order inversion"),
        "waits_forever": PathDef(waits_forever, "blocks forever"),
        "double_put": PathDef(double_put, "drops one reference too many"),
        "leaks": PathDef(leaks, "returns holding a lock"),
        "toggle": PathDef(racy_toggle, "unlocked read-modify-write"),
    },
)


def run(threads: str, init: str = SHARED, **kw):
    return explore(Setup(TOY, parse_threads(threads, TOY), init), **kw)


def test_lock_order_inversion_is_a_deadlock_property():
    v = run("inverted:0").violation
    assert v is not None and v.prop == "deadlock" and "inverts the lock order" in v.message
    assert len(v.trace) == 2


def test_blocked_threads_are_a_deadlock():
    v = run("waits_forever:0").violation
    assert v is not None and v.prop == "deadlock" and "blocked" in v.message
    assert len(v.trace) == 1


def test_refcount_underflow():
    v = run("double_put:0").violation
    assert v is not None and v.prop == "refcount_underflow"
    assert len(v.trace) == 4


def test_lock_leak():
    v = run("leaks:0").violation
    assert v is not None and v.prop == "deadlock" and "still holding invalidate_lock" in v.message


def test_exhaustive_counts_every_interleaving_outcome():
    """Two unlocked toggles: the lost update (both read 'shared') is among the reachable outcomes."""
    result = run("toggle:0,toggle:0")
    assert result.violation is None and result.complete
    assert set(result.outcomes) == {"T0=shared T1=private", "T0=private T1=shared", "T0=shared T1=shared"}
    # (state, T0 position, T1 position): 4 before any store, 4 after the first store, 2 after a read of
    # the stored value, 3 final (both read 'shared' → one merged final state; the two ordered ones differ)
    assert result.states == 13


def test_state_caching_merges_interleavings():
    """Without caching, 3 threads of 2 steps have 6!/(2!^3) = 90 interleavings; with it, far fewer states."""
    result = run("toggle:0,toggle:1,toggle:2")
    assert result.states < 90 and result.states == 3**3  # independent threads: product of per-thread states
    assert len(result.outcomes) == 1


def test_custom_locking_variant():
    """A user variant: RFC2 whose host fault checks shareability after dropping the lock — a wider window."""
    proto = Protocol("rfc-v2-unlocked-check", "test", locking_paths(Locking(fault_lock=None)), declared_safe=False)
    v = explore(Setup(proto, parse_threads("host_fault:0,convert_private:0", proto), SHARED)).violation
    assert v is not None and v.prop in {"host_maps_private", "allocation_escapes_conversion"}


def test_random_respects_preemption_bound_zero():
    proto = Protocol("p", "t", locking_paths(Locking()))
    setup = Setup(proto, [ThreadSpec("host_fault", (0,)), ThreadSpec("convert_private", (0,))], SHARED)
    result = Explorer(setup, preemption_bound=0).random(50, seed=1)
    assert result.violation is None  # the TOCTOU needs a preemption


def test_world_key_is_hashable_and_clone_independent():
    w = World(2, SHARED)
    c = w.clone()
    c.put("share", 1, PRIVATE)
    assert w.share == (SHARED, SHARED) and c.share == (SHARED, PRIVATE)
    assert hash(w.key()) != hash(c.key()) or w.key() != c.key()


def test_docs_example_variant_runs():
    """The 'Writing your own variant' example in docs/races.md works as documented."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "races.md").read_text()
    code = text.split("## Writing your own variant", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/races.md", "exec"), namespace)
    mine = namespace["MINE"]
    assert isinstance(mine, Protocol)
    result = explore(Setup(mine, parse_threads("host_fault:0,convert_private:0", mine), SHARED))
    assert result.violation is None and result.complete
