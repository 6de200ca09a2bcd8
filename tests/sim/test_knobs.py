"""Every knob real (simulator issue item 2): each scenario key and each event field changes the result.

For every leaf key of the scenario schema (:class:`gmemlab.workload.scenario.Scenario`, nested tables, each
shared-region field, the fields of a payload range) the test flips the value of built-in scenarios and runs
them: the result (metrics, the three times, counters, events, samples) must change, or the flipped scenario
must be refused with a :class:`~gmemlab.errors.UsageError` (a meaningless combination). It does so per guest
architecture: the schema declares the arches a key acts on (``option(arches=...)``, the ``arches`` column of
``docs/scenario-reference.md``; every arch unless said), and

* on each declared arch that has a built-in, a built-in of that arch must show the key's effect, under its
  policy or the other one; a key with choices (``accept.mode``, a level, a bool) must show every value there,
  each differing from every other value (two values with one result are both inert), except a value that
  stands for another by design (:data:`ALIASES`: ``flow = "auto"``, a region's ``"rule"``);
* on each other arch with a built-in that has the key, every value but the default must be refused, naming
  the key (:func:`test_a_key_is_refused_on_arches_it_cannot_act_on`): a key of one arch is never silently inert
  on another.

A key inert in a built-in only because of that built-in's other settings (pins without pinned pages, a 1 GiB
guest with no memory above 4 GiB) is flipped from a base with the setting that enables it (:data:`CONTEXT`,
one entry per key and arch, with the reason). Labels (names, descriptions, ``expect``) are text for people and
are the only keys exempt. No flip may end in anything but a result or a UsageError (no traceback).

Runs use small bases (:data:`FAST`: a short runtime and a small accepted amount) so a flip costs a fraction
of a second; ``GMEMLAB_KNOBS=all`` flips every key on every built-in and prints where each is inert and, per
key, the arches it is declared for and any where it is inert (what the issue's closing note reports), instead
of stopping at the first built-in of each arch that shows every value (run it with ``--timeout 0``).

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
from gmemlab.workload.scenario import ACCEPTING, ARCHES, Scenario, _check, builtin_names, key_arches, load_scenario
from gmemlab.workload.schema import ALL, Portion

KB, MB, GB = 4096, 1 << 20, 1 << 30
LABELS = {"name", "description", "expect"}  # text shown to people; everything else must act
# Cheap first: a key is tried on these in order until one shows its effect (new built-ins come last).
CHEAP_FIRST = ["pkvm-android-1g", "attr-init-1t", "non-coco-mmap-64g", "snp-16g-1g-reference", "tdx-boot-64g",
               "churn-pingpong", "dpdk-shared-buffers-64g", "snp-lazy-accept-64g", "snp-16g-2m-reference",
               "snp-eager-accept-64g", "snp-mmap-populate-64g"]
ORDER = [n for n in CHEAP_FIRST if n in builtin_names()] + [n for n in builtin_names() if n not in CHEAP_FIRST]
ARCH_OF = {name: load_scenario(name).arch for name in ORDER}
FAST = {name: ["runtime_s=2"] + (["accept.accepted_eventually=0.05"] if ARCH_OF[name] in ACCEPTING else [])
        for name in ORDER}
FAST["attr-init-1t"] = []  # launch only (runtime_s = 0)
FAST["non-coco-mmap-64g"].append("guest_mem=4GiB")  # it touches every page: 64 GiB of 4K faults cost 15-45 s a run
RESULT_KEYS = ("metrics", "time", "counters", "counters_by_phase", "events", "series", "unpriced")
EXHAUSTIVE = os.environ.get("GMEMLAB_KNOBS") == "all"
if EXHAUSTIVE:  # a key's flips on every built-in take longer than pytest-timeout's 600 s
    pytestmark = pytest.mark.timeout(0)


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

Outcome = dict[str, Any] | str


def outcome(sc: Scenario, policy: str) -> Outcome:
    """The run's result, or ``"refused: ..."`` for a scenario the schema or the run refuses."""
    problems = _check(sc)
    if problems:
        return f"refused: {problems[0][0]}: {problems[0][1]}"
    try:
        out = run_scenario(sc, policy).as_json()
    except UsageError as exc:
        return f"refused: {exc}"
    return {k: out[k] for k in RESULT_KEYS}


# Keys that act on an arch only once another key enables them, and the built-ins of that arch leave it off (the
# built-in's choice, not the arch's): runs for the key on that arch start from a base with these settings. A few
# entries only make the runs affordable (said so).
CONTEXT: dict[tuple[str, str], tuple[str, ...]] = {
    ("host_access.pins.longterm", "tdx"): ("host_access.pins.fraction=0.5",),  # no pins, nothing long-term
    # ... and pKVM's conversions never land in a folio holding pinned pool pages
    ("host_access.pins.longterm", "pkvm"): ("host_access.pins.fraction=0.5", "runtime_churn.neighbour_of_pool=1.0"),
    # a 1G cap is the 2M cap over 2 MiB THP folios; 1 GiB folios, all private but the first
    ("arch_limits.private_max_level", "pkvm"): ("guest_mem=4GiB", "backing.allocator=hugetlb", "backing.page=1GiB"),
    # the remaining RAM is converted only after an in-place launch into a shared file
    ("populate.convert_rest_to_private", "tdx"): ("populate.method=mmap_inplace", "gmem_flags.init=shared"),
    ("populate.convert_rest_to_private", "pkvm"): ("populate.method=mmap_inplace", "gmem_flags.init=shared"),
    # a 1 GiB guest has no memory above 4 GiB, and 4K conversions into 2 MiB folios split one folio anywhere
    ("runtime_churn.locality", "pkvm"): ("guest_mem=8GiB", "backing.allocator=hugetlb", "backing.page=1GiB",
                                         "runtime_s=20"),
    ("shared_regions.*.location", "pkvm"): ("guest_mem=8GiB",),  # below 4 GiB "low" and "top" are one place
    # the built-in's payload overlaps the kernel image reserved at 16 MiB and is moved top-down whatever its GPA;
    # elsewhere only where it starts in its folio shows (host and guest touches would allocate every folio)
    ("populate.ranges[].gpa", "none"): ('populate.ranges=[{name = "kernel_initrd", gpa = 0x4100000, size = "32MiB"}]',
                                        "backing.page=2MiB", "guest_touch.fraction_of_mem=0",
                                        "host_access.touched_fraction=0"),
    # the per-VM flow of a non-CoCo guest faults its anonymous copy one page at a time in the model (it took
    # 24 GiB on the 64 GiB guest, a bug reported on its own): flip it on a small guest touching little
    ("gmem_flags.mmap", "none"): ("guest_mem=2GiB", "guest_touch.fraction_of_mem=0.01"),
    # cost only: host 4K touches scattered over all of a 64 GiB guest (a pool's touched_fraction = 1.0 read as a
    # fraction of all pages) take 2-6 minutes a run
    ("host_access.pattern", "snp"): ("guest_mem=4GiB",),
    ("host_access.pattern", "tdx"): ("guest_mem=4GiB",),
}


# Values that stand for another value by design: key -> (the value, what it stands for). Such a value may give the
# result of the one it stands for; the key's other values must still differ from each other.
ALIASES: dict[str, tuple[Any, str]] = {
    "flow": ("auto", "the kernel's flow: in-place or per-vm"),
    "shared_regions.*.protocol": ("rule", "the region rule's protocol: ghcb or msr"),
    "shared_regions.*.location": ("rule", "where Linux or OVMF puts the region: one of the explicit places"),
    "backing.allocator": ("buddy_thp", "pKVM's THP blocks, modelled as 2 MiB HugeTLB folios [assumed] (machine.py)"),
}


def settings(name: str, gkey: str) -> tuple[str, ...]:
    """The ``--set`` overrides of ``name``'s base when ``gkey`` is flipped: :data:`FAST` and the key's context."""
    return (*FAST[name], *CONTEXT.get((gkey, ARCH_OF[name]), ()))


_BASES: dict[tuple[str, tuple[str, ...], str], tuple[Scenario, Outcome]] = {}


def base(name: str, policy: str, sets: tuple[str, ...] = ()) -> tuple[Scenario, Outcome]:
    sets = sets or tuple(FAST[name])
    if (name, sets, policy) not in _BASES:
        sc = load_scenario(name, sets)
        _BASES[name, sets, policy] = sc, outcome(sc, policy)
    return _BASES[name, sets, policy]


def other(policy: str) -> str:
    return "deferred" if policy == "eager" else "eager"


NO_ALIAS = object()


def verdicts(name: str, sets: tuple[str, ...], key: str, value: Any, alts: list[Any], every: bool,
             alias: Any = NO_ALIAS) -> dict[Any, str]:
    """Flip ``key`` of ``name``'s base from ``value`` to each of ``alts``: per value, ``"acts"``, ``"refused:
    ..."`` or ``"same as X"``. Results are compared under the scenario's policy, then (for what that shows
    equal) under the other one. ``every`` (a key whose values are enumerated): each value, the base's too, must
    differ from every other value that runs (two flips giving one result are both inert, even when both differ
    from the base), but ``alias`` (:data:`ALIASES`) and ``"auto"`` (None: the arch's value, e.g.
    ``arch_limits.private_max_level``) may equal another; otherwise a flip acts when it differs from the base."""
    sc0 = load_scenario(name, sets)
    cache: dict[tuple[int, str], Outcome] = {}

    def result(i: int, policy: str) -> Outcome:
        if key == "policy":  # the policy a run takes when none is given: the value is the policy run
            policy = values[i]
        if (i, policy) not in cache:
            v = values[i]
            if key == "policy":
                cache[i, policy] = base(name, v, sets)[1] if v == value else outcome(with_value(sc0, ["policy"], v), v)
            elif i == 0:
                cache[i, policy] = base(name, policy, sets)[1]
            else:
                cache[i, policy] = outcome(with_value(base(name, policy, sets)[0], key.split("."), v), policy)
        return cache[i, policy]

    def same(i: int, j: int) -> bool:
        return all(result(i, p) == result(j, p) for p in dict.fromkeys((sc0.policy, other(sc0.policy))))

    values = [value, *alts]
    out: dict[Any, str] = {}
    for i in range(len(values)) if every else range(1, len(values)):
        if values[i] is None or values[i] == alias:
            out[values[i]] = "acts (an alias)"
            continue
        r = result(i, sc0.policy)
        if isinstance(r, str):
            out[values[i]] = r
            if not every and not EXHAUSTIVE:
                break
            continue
        peers = [j for j in range(len(values)) if j != i and values[j] is not None and values[j] != alias] \
            if every else [0]
        twin = next((j for j in peers if not isinstance(result(j, sc0.policy), str) and same(i, j)), None)
        out[values[i]] = "acts" if twin is None else f"same as {values[twin]!r}"
        if not every and twin is None and not EXHAUSTIVE:
            break  # one flip of a number that acts is enough
    return out


def schema_keys() -> dict[str, tuple[S.Spec, str]]:
    """Every generic key of the schema with a scenario that has it (shared regions and payload ranges come
    from the built-ins: every field of every region exists in each)."""
    out: dict[str, tuple[S.Spec, str]] = {}
    for name in ORDER:
        for key, spec, _ in leaves(load_scenario(name, FAST[name])):
            out.setdefault(generic(key), (spec, name))
    return out


def concrete(name: str, gkey: str, sets: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """The scenario's keys behind a generic key, with their values (a region key: every region)."""
    return [(k, v) for k, _, v in leaves(load_scenario(name, sets or FAST[name])) if generic(k) == gkey]


KEYS = schema_keys()
# The arches each key acts on, as the schema declares them (option(arches=...), docs/scenario-reference.md):
# elsewhere a scenario may only leave the key at its default.
DECLARED = {k.replace(".NAME.", ".*.").replace("[N]", "[]"): arches for k, arches, _ in key_arches()}


def values_of(spec: S.Spec) -> list[Any] | None:
    """Every value of a key that enumerates them (each must act), None for numbers and sizes."""
    if isinstance(spec, S.Bool):
        return [False, True]
    if isinstance(spec, S.Choice):
        return list(spec.choices)
    if isinstance(spec, S.LevelSize):
        return [lv.bytes for lv in (Level.PG_4K, Level.PG_2M, Level.PG_1G)]
    return None


def test_every_key_declares_its_arches():
    assert set(KEYS) <= set(DECLARED), f"keys the schema walk does not name: {set(KEYS) - set(DECLARED)}"
    for gkey, arches in DECLARED.items():
        assert arches and set(arches) <= set(ARCHES), (gkey, arches)


@pytest.mark.parametrize("gkey", sorted(KEYS))
def test_every_key_changes_the_result(gkey):
    """On every arch the key is declared to act on and that has a built-in, the key changes the result of a
    built-in of that arch (each of its values, for keys with choices: each differs from the others), or the
    flip is refused as meaningless there; never a traceback. A key inert on a whole arch fails here: it must be
    made to act there or be declared for the other arches only (and then refused, next test)."""
    spec = KEYS[gkey][0]
    wanted = set(values_of(spec) or ["any"])
    arches = [a for a in DECLARED[gkey] if a in ARCH_OF.values()]
    acted: dict[str, set[Any]] = {a: set() for a in arches}
    tried: dict[str, list[str]] = {a: [] for a in arches}
    for name in ORDER:
        arch = ARCH_OF[name]
        if arch not in acted or (not EXHAUSTIVE and acted[arch] >= wanted):
            continue
        sets = settings(name, gkey)
        for key, value in concrete(name, gkey, sets):
            if not EXHAUSTIVE and acted[arch] >= wanted:
                break  # this arch is shown: the built-in's other regions need no runs
            every, alts = alternatives(spec, value)
            seen = verdicts(name, sets, key, value, alts, every, ALIASES.get(gkey, (NO_ALIAS,))[0])
            tried[arch] += [f"{name}: {key} = {value!r} -> {v!r}: {verdict}" for v, verdict in seen.items()]
            acted[arch].update(v if every else "any" for v, verdict in seen.items() if not verdict.startswith("same"))
            if EXHAUSTIVE:
                for v, verdict in seen.items():
                    if verdict.startswith("same"):
                        print(f"inert: {name} ({arch}): {key} = {v!r} ({verdict})")
    assert any(tried.values()), f"{gkey}: no built-in scenario has it"
    dead = {a: sorted(wanted - acted[a], key=repr) for a in arches if tried[a] and not acted[a] >= wanted}
    untried = [a for a in arches if not tried[a]]
    if EXHAUSTIVE:
        print(f"arches: {gkey}: declared {', '.join(DECLARED[gkey])}; inert on {dead or 'none'}"
              + (f"; no built-in of {', '.join(untried)} has it" if untried else ""))
    assert not dead, (f"{gkey}: inert on arch {', '.join(dead)} (values {dead}): make it act there or declare "
                      f"it for the other arches only (option(arches=...)):\n"
                      + "\n".join(line for a in dead for line in tried[a]))


def outsiders(gkey: str) -> list[str]:
    """The first built-in of each arch the key is not declared for that has the key (a region key needs a
    region: arch none has none)."""
    out = []
    for arch in sorted(set(ARCH_OF.values()) - set(DECLARED[gkey])):
        out += [n for n in ORDER if ARCH_OF[n] == arch and concrete(n, gkey)][:1]
    return out


@pytest.mark.parametrize("gkey", sorted(k for k in KEYS if outsiders(k)))
def test_a_key_is_refused_on_arches_it_cannot_act_on(gkey):
    """On every arch outside the key's declared ones that has a built-in with the key, every value but the
    default is refused, naming the key's path, in one line."""
    spec = KEYS[gkey][0]
    for name in outsiders(gkey):
        arch = ARCH_OF[name]
        key, value = concrete(name, gkey)[0]
        for alt in alternatives(spec, value)[1]:
            problems = _check(with_value(load_scenario(name, FAST[name]), key.split("."), alt))
            assert problems, f"{name} (arch {arch}): {key} = {alt!r} is accepted but {gkey} is declared for " \
                             f"{', '.join(DECLARED[gkey])} only"
            path, reason = problems[0]
            assert path == key and "\n" not in reason, (path, reason)


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
