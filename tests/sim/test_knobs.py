"""Every knob real (simulator issue item 2): each scenario key and each event field changes the result.

For every leaf key of the scenario schema (:class:`gmemlab.workload.scenario.Scenario`, nested tables, each
shared-region field, the fields of a payload range) the test flips the value of a built-in scenario and runs
it: the result (metrics, the three times, counters, events, samples) must change, or the flipped scenario
must be refused with a :class:`~gmemlab.errors.UsageError` (a meaningless combination). A key passes when
some built-in scenario shows its effect, under the scenario's policy or the other one; a key with choices
(``accept.mode``, a level, a bool) passes only when *every* value shows an effect somewhere. Labels (names,
descriptions, ``expect``) are text for people and are the only keys exempt. No flip may end in anything but
a result or a UsageError (no traceback).

Runs use small bases (:data:`FAST`: a short runtime and a small accepted amount) so a flip costs a fraction
of a second; ``GMEMLAB_KNOBS=all`` flips every key on every built-in and prints where each is inert (what the
issue's closing note reports), instead of stopping at the first scenario that shows an effect.

Event fields: every field of every event type the generators emit is perturbed in a stream and replayed
through the engine; the result must change (the engine reads it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from gmemlab.arch import generate
from gmemlab.errors import UsageError
from gmemlab.level import Level
from gmemlab.sim.engine import Engine
from gmemlab.sim.run import run_scenario
from gmemlab.workload import events as ev
from gmemlab.workload import schema as S
from gmemlab.workload.scenario import Scenario, _check, builtin_names, load_scenario
from gmemlab.workload.schema import ALL, Portion

KB, MB, GB = 4096, 1 << 20, 1 << 30
LABELS = {"name", "description", "expect"}  # text shown to people; everything else must act
# Cheap first: a key is tried on these in order until one shows its effect (new built-ins come last).
CHEAP_FIRST = ["pkvm-android-1g", "attr-init-1t", "non-coco-mmap-64g", "snp-16g-1g-reference", "tdx-boot-64g",
               "churn-pingpong", "dpdk-shared-buffers-64g", "snp-lazy-accept-64g", "snp-16g-2m-reference",
               "snp-eager-accept-64g", "snp-mmap-populate-64g"]
ORDER = [n for n in CHEAP_FIRST if n in builtin_names()] + [n for n in builtin_names() if n not in CHEAP_FIRST]
FAST = {name: ["runtime_s=2", "accept.accepted_eventually=0.05"] for name in ORDER}
FAST["attr-init-1t"] = []  # launch only (runtime_s = 0)
RESULT_KEYS = ("metrics", "time", "counters", "counters_by_phase", "events", "series", "unpriced")
EXHAUSTIVE = os.environ.get("GMEMLAB_KNOBS") == "all"


# --- the schema's leaves ----------------------------------------------------------------------------

def leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, S.Spec, Any]]:
    """(dotted key, spec, value) for every leaf of ``obj``: shared regions by name, payload range 0."""
    for fld in dataclasses.fields(obj):
        spec = fld.metadata.get("spec")
        if spec is None or fld.name in LABELS:
            continue
        value, key = getattr(obj, fld.name), prefix + fld.name
        if isinstance(spec, S.Nested):
            yield from leaves(value, key + ".")
        elif isinstance(spec, S.TableOf):
            for item in value:
                yield from leaves(item, f"{key}.{item.name}.")
        elif isinstance(spec, S.ArrayOf):
            if value:  # every range has the same keys: the first one stands for them
                yield from leaves(value[0], f"{key}[0].")
        else:
            yield key, spec, value


def generic(key: str) -> str:
    """The schema key of a scenario's key: ``shared_regions.swiotlb.size`` -> ``shared_regions.*.size``."""
    parts = key.split(".")
    if parts[0] == "shared_regions":
        parts[1] = "*"
    return ".".join(parts).replace("[0]", "[]")


def with_value(obj: Any, parts: list[str], value: Any) -> Any:
    head, rest = parts[0], parts[1:]
    if head.endswith("]"):
        name, index = head[:-1].split("[")
        items = list(getattr(obj, name))
        items[int(index)] = with_value(items[int(index)], rest, value)
        return replace(obj, **{name: tuple(items)})
    if not rest:
        return replace(obj, **{head: value})
    sub = getattr(obj, head)
    if isinstance(sub, tuple):  # shared_regions.<name>.<field>
        return replace(obj, **{head: tuple(with_value(r, rest[1:], value) if r.name == rest[0] else r
                                           for r in sub)})
    return replace(obj, **{head: with_value(sub, rest, value)})


def alternatives(spec: S.Spec, value: Any) -> tuple[bool, list[Any]]:
    """(every value must act, the flipped values to try). Values a spec enumerates (choices, levels,
    bools) must each act; for a number or a size one that acts is enough (double, else half)."""
    if isinstance(spec, S.Bool):
        return True, [not value]
    if isinstance(spec, S.Choice):
        return True, [c for c in spec.choices if c != value]
    if isinstance(spec, S.LevelSize):
        return True, [lv.bytes for lv in (Level.PG_4K, Level.PG_2M, Level.PG_1G) if lv.bytes != value]
    if isinstance(spec, S.Levels):
        return False, [v for v in ((2 * MB, KB), (KB,)) if v != value]
    if isinstance(spec, S.Amount):
        if value == ALL:
            return False, [Portion(fraction=0.5)]
        if value.size is not None:
            return False, [Portion(size=value.size * 2), Portion(size=value.size // 2 // KB * KB)]
        return False, [Portion(fraction=value.fraction / 2), ALL]
    if isinstance(spec, S.Count):
        return False, [2] if value == "vcpus" else ["vcpus", (value or 1) * 2]
    if isinstance(spec, S.SizeDist):
        return False, [((64 * KB, 1.0),) if value != ((64 * KB, 1.0),) else ((KB, 1.0),)]
    if isinstance(spec, S.Size):
        if value is None:
            return False, [2 * MB, 64 * MB]
        half = value // 2
        return False, [value * 2] + ([half] if half >= spec.min and not half % spec.multiple_of else [])
    if isinstance(spec, S.Number):
        if spec.integer:
            cand = [value * 2 if value else 1, value // 2 if value > 1 else value + 1]
        else:
            cand = [value / 2 if value else 0.5, min(value * 2, 1.0) if spec.max == 1.0 else (value * 2 or 1.0)]
        ok = [c for c in cand if c != value and (spec.max is None or c <= spec.max)
              and (spec.min is None or c >= spec.min)]
        return False, list(dict.fromkeys(ok))
    raise AssertionError(f"no flip for {type(spec).__name__}: add one (a new kind of key must be flipped too)")


# --- running ----------------------------------------------------------------------------------------

def outcome(sc: Scenario, policy: str) -> dict[str, Any] | str:
    """The run's result, or ``"refused: ..."`` for a scenario the schema or the run refuses."""
    problems = _check(sc)
    if problems:
        return f"refused: {problems[0][0]}: {problems[0][1]}"
    try:
        out = run_scenario(sc, policy).as_json()
    except UsageError as exc:
        return f"refused: {exc}"
    return {k: out[k] for k in RESULT_KEYS}


_BASES: dict[tuple[str, str], tuple[Scenario, dict[str, Any] | str]] = {}


def base(name: str, policy: str) -> tuple[Scenario, dict[str, Any] | str]:
    if (name, policy) not in _BASES:
        sc = load_scenario(name, FAST[name])
        _BASES[name, policy] = sc, outcome(sc, policy)
    return _BASES[name, policy]


def acts(name: str, key: str, value: Any) -> str:
    """``"changed"``, ``"refused: ..."`` or ``"same"``: flipping ``key`` to ``value`` in ``name``'s base,
    under the scenario's policy, then (when that shows nothing) under the other one."""
    sc0 = load_scenario(name, FAST[name])
    result = "same"
    if key == "policy":  # the policy a run takes when none is given: compare the two defaults
        after = outcome(with_value(sc0, ["policy"], value), value)
        return after if isinstance(after, str) else ("changed" if after != base(name, sc0.policy)[1] else "same")
    for policy in dict.fromkeys((sc0.policy, "deferred" if sc0.policy == "eager" else "eager")):
        sc, before = base(name, policy)
        after = outcome(with_value(sc, key.split("."), value), policy)
        if isinstance(after, str):
            return after
        if after != before:
            return "changed"
    return result


def schema_keys() -> dict[str, tuple[S.Spec, str]]:
    """Every generic key of the schema with a scenario that has it (shared regions and payload ranges come
    from the built-ins: every field of every region exists in each)."""
    out: dict[str, tuple[S.Spec, str]] = {}
    for name in ORDER:
        for key, spec, _ in leaves(load_scenario(name, FAST[name])):
            out.setdefault(generic(key), (spec, name))
    return out


def concrete(name: str, gkey: str) -> list[tuple[str, Any]]:
    """The scenario's keys behind a generic key, with their values (a region key: every region)."""
    return [(k, v) for k, _, v in leaves(load_scenario(name, FAST[name])) if generic(k) == gkey]


KEYS = schema_keys()


def values_of(spec: S.Spec) -> list[Any] | None:
    """Every value of a key that enumerates them (each must act), None for numbers and sizes."""
    if isinstance(spec, S.Bool):
        return [False, True]
    if isinstance(spec, S.Choice):
        return list(spec.choices)
    if isinstance(spec, S.LevelSize):
        return [lv.bytes for lv in (Level.PG_4K, Level.PG_2M, Level.PG_1G)]
    return None


@pytest.mark.parametrize("gkey", sorted(KEYS))
def test_every_key_changes_the_result(gkey):
    """Each key changes the result of some built-in (each of its values, for keys with choices), or the flip
    is refused as meaningless; never a traceback."""
    spec = KEYS[gkey][0]
    wanted = values_of(spec)
    acted: set[Any] = set()  # values shown to differ from another value of the key
    tried: list[str] = []
    for name in ORDER:
        for key, value in concrete(name, gkey):
            _, alts = alternatives(spec, value)
            verdicts = {a: acts(name, key, a) for a in alts}
            tried += [f"{name}: {key} = {value!r} -> {a!r}: {v}" for a, v in verdicts.items()]
            for a, verdict in verdicts.items():
                if verdict != "same":
                    acted.update((a, value) if wanted is not None else ("any",))
            if EXHAUSTIVE and all(v == "same" for v in verdicts.values()):
                print(f"inert: {name}: {key} = {value!r} (tried {', '.join(map(repr, alts))})")
        if not EXHAUSTIVE and acted >= set(wanted or ["any"]):
            return
    assert tried, f"{gkey}: no built-in scenario has it"
    if wanted is None:
        assert acted, f"{gkey}: no flip changes any built-in's result:\n" + "\n".join(tried)
    else:
        dead = [v for v in wanted if v not in acted]
        assert not dead, f"{gkey}: the values {dead} change nothing in any built-in:\n" + "\n".join(tried)


# --- event fields -------------------------------------------------------------------------------------

# The ranges ([start, end)) of events are where the model acts; an exit record's range (HcMapGpa, MapGpa)
# names what the VMM's following conversion acts on, and is counted once per exit whatever its size.
RANGE_FIELDS = {"start", "end"}


def perturbed(value: Any, name: str) -> Any:
    """Another valid value of an event field."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, ev.Phase):
        return ev.Phase.BOOT if value != ev.Phase.BOOT else ev.Phase.RUNTIME
    if name == "kind":
        return "zero" if value != "zero" else "normal"
    if name == "allocator":
        return "buddy" if value != "buddy" else "hugetlb"
    if name in ("page_size", "granule"):
        return 2 * MB if value == KB else KB
    if name == "try_levels":
        return (Level.PG_4K,) if value != (Level.PG_4K,) else (Level.PG_2M, Level.PG_4K)
    if name == "runs":
        return tuple(ev.PscRun(r.start, r.end, KB if r.page_size != KB else r.size) for r in value)
    if isinstance(value, int):
        return value * 2 if value > 1 else value + 1
    raise AssertionError(f"no perturbation for field {name} = {value!r}: add one")


def rewrite(stream: list[ev.Event], cls: type, name: str) -> tuple[list[ev.Event], int]:
    """``stream`` with field ``name`` of every ``cls`` event perturbed (inside runs too), and how many."""
    out: list[ev.Event] = []
    n = 0
    for e in stream:
        if isinstance(e, ev.Repeat):
            block, k = rewrite(list(e.block), cls, name)
            out.append(ev.Repeat(tuple(block), e.times, e.stride))
            n += k
        elif type(e) is cls:
            out.append(replace(e, **{name: perturbed(getattr(e, name), name)}))
            n += 1
        else:
            out.append(e)
    return out, n


def replay(sc: Scenario, stream: list[ev.Event]) -> Any:
    engine = Engine(sc, sc.policy)
    try:
        engine.run(stream)
    except Exception as exc:  # a perturbed stream the model refuses: the field was read
        return f"{type(exc).__name__}: {exc}"
    return (engine.model_metrics(), {k: {lane: dict(c) for lane, c in v.items()} for k, v in engine.ledger.items()},
            dict(engine.events), engine.samples)


def _event_fields() -> list[tuple[str, str]]:
    out = []
    for cls in ev.Event.__args__:  # type: ignore[attr-defined]
        if cls is ev.Repeat:
            continue
        out += [(cls.__name__, f.name) for f in dataclasses.fields(cls) if f.name not in RANGE_FIELDS]
    return out


EVENT_FIELDS = _event_fields()
# Fields that are identities, not inputs: KVM numbers memslots as the VMM likes.
IDENTITIES = {("SetMemoryRegion", "slot")}


@pytest.mark.parametrize(("cls_name", "field"), [f for f in EVENT_FIELDS if f not in IDENTITIES])
def test_every_event_field_is_read(cls_name, field):
    """Perturbing the field in a built-in's stream changes what the engine produces."""
    cls = getattr(ev, cls_name)
    for name in ORDER:
        sc = load_scenario(name, FAST[name])
        stream = list(generate(sc, 0))
        changed, n = rewrite(stream, cls, field)
        if not n:
            continue
        if replay(sc, changed) != replay(sc, stream):
            return
    pytest.fail(f"{cls_name}.{field}: perturbing it changes no built-in's result (or no built-in emits it)")
