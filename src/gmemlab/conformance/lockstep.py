"""Lockstep differential testing: every operation runs on two backends at once and is compared at once.

:class:`Lockstep` holds two sides (normally the model and the kernel), each a backend behind an observation
recorder (:mod:`.record`) with its own :class:`~.fuzz_ops.World`. :meth:`Lockstep.apply` runs one operation
(:mod:`.fuzz_ops`) on both and compares what they did:

* the observations the operation produced (every backend call: arguments, result or errno, SIGBUS, vCPU
  exits) must be equal, else a ``divergence``;
* an exception a backend raises that is not a kernel outcome (a ``TypeError`` in the model, a ctypes error in
  the kernel client, an ``AssertionError`` from a model check) is an ``exception`` finding, never swallowed;
* :class:`~gmemlab.errors.UnsupportedByBackend` on one side only is a coverage ``gap`` (the other side ran);
  on both sides the operation simply did not run;
* after every operation the model's invariants are checked (``check_invariants``): a violation is an
  ``invariant`` finding.

Each finding is raised as :class:`Finding`, which names the operation and the side. :func:`machine_for`
turns a lockstep factory into a hypothesis ``RuleBasedStateMachine`` with one rule per operation, so a
finding is shrunk to a minimal sequence; :func:`replay` re-runs a saved sequence without hypothesis.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import hypothesis.strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ..errors import UnsupportedByBackend
from .fuzz_ops import OPS, OUTCOMES, NotRun, Op, OpSpec, World, run_op, setup_ops
from .record import Observation, Recorder

BackendFactory = Callable[[], Any]


class Finding(Exception):
    """A failure the lockstep run found: ``kind`` is divergence, exception, invariant or gap."""

    def __init__(self, kind: str, step: int, op: Op, detail: str, left: str = "", right: str = "") -> None:
        self.kind = kind
        self.step = step
        self.op = op
        self.detail = detail
        self.left = left
        self.right = right
        super().__init__(f"{kind} at operation {step} ({op['op']}): {detail}")

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "op": self.op, "detail": self.detail,
                "left": self.left, "right": self.right}


@dataclass
class StepResult:
    """What one side did for one operation."""

    observations: list[Observation]
    status: str  # ran | absent (no target) | notrun | unsupported
    detail: str = ""


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})"


class Side:
    """One backend in a lockstep run."""

    def __init__(self, name: str, factory: BackendFactory, gpa_base: int | None = None) -> None:
        self.name = name
        self.backend = factory()
        self.recorder = Recorder()
        self.world = World(self.recorder.wrap(self.backend, "kvm"), gpa_base if gpa_base is not None else 0)

    def window(self) -> tuple[int, int]:
        lo, hi = self.backend.guest_gpa_window()
        return int(lo), int(hi)

    def step(self, o: Op) -> StepResult:
        start = len(self.recorder.log)
        try:
            ran = run_op(self.world, o)
        except OUTCOMES:
            ran = True  # the recorder logged it; the sequence goes on
        except NotRun as exc:
            return StepResult(self.recorder.log[start:], "notrun", str(exc))
        except UnsupportedByBackend as exc:
            return StepResult(self.recorder.log[start:], "unsupported", exc.what)
        except Exception as exc:
            raise SideCrash(self.name, exc) from exc
        return StepResult(self.recorder.log[start:], "ran" if ran else "absent")

    def check_invariants(self) -> None:
        check = getattr(self.backend, "check_invariants", None)
        if check is not None:
            check()

    def close(self) -> None:
        self.backend.close()


class SideCrash(Exception):
    def __init__(self, side: str, exc: BaseException) -> None:
        self.side = side
        self.exc = exc
        super().__init__(f"{side}: {type(exc).__name__}: {exc}{_where(exc)}")


@dataclass
class Stats:
    """Counts over a whole fuzz run (all sequences)."""

    sequences: int = 0
    operations: int = 0  # operations run on both sides
    per_op: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # "op: ok" / "op: EINVAL" ...
    not_run: Counter[str] = field(default_factory=Counter)  # reason -> count (neither side ran it)
    gaps: Counter[str] = field(default_factory=Counter)  # "op: what" -> count (one side only)


def _gpa_base(windows: list[tuple[int, int]]) -> int:
    """The GPA where fuzzed guest-window slots start: inside every side's vCPU window, 2 MiB aligned, at
    4 GiB when the windows reach that far (as the conformance cases place slots)."""
    lo = max(w[0] for w in windows)
    hi = min(w[1] for w in windows)
    base = max(lo, 1 << 32) if hi >= (1 << 32) + (1 << 24) else lo
    return (base + (1 << 21) - 1) & ~((1 << 21) - 1)


class Lockstep:
    """Two backends driven by the same operations; :meth:`apply` raises :class:`Finding` on any difference."""

    def __init__(self, left: BackendFactory, right: BackendFactory, stats: Stats | None = None,
                 allow_gaps: bool = False, names: tuple[str, str] = ("model", "kernel")) -> None:
        self.stats = stats if stats is not None else Stats()
        self.allow_gaps = allow_gaps
        self.ops: list[Op] = []
        self.halted = False  # after an allowed gap the two sides may differ: the sequence stops
        self.failed = False
        self.on_finding: Callable[[Finding, list[Op]], None] | None = None
        self.sides: list[Side] = []
        try:
            self.sides.append(Side(names[0], left))
            self.sides.append(Side(names[1], right))
        except BaseException:
            for s in self.sides:
                s.close()
            raise
        base = _gpa_base([s.window() for s in self.sides])
        for s in self.sides:
            s.world.gpa_base = base

    def has(self, kind: str | None) -> bool:
        return kind is None or bool(self.sides[0].world.items(kind))

    def enabled(self, when: Callable[[World], bool] | None) -> bool:
        return when is None or when(self.sides[0].world)

    def apply(self, o: Op) -> None:
        try:
            self._apply(o)
        except Finding as f:
            self._found(f)
            raise

    def _found(self, f: Finding) -> None:
        self.failed = True
        if self.on_finding is not None:
            self.on_finding(f, list(self.ops[: f.step + 1]))

    def _apply(self, o: Op) -> None:
        if self.halted:
            return
        step = len(self.ops)
        self.ops.append(o)
        results = []
        for side in self.sides:
            try:
                results.append(side.step(o))
            except SideCrash as exc:
                raise Finding("exception", step, o, f"{exc}") from exc.exc
        a, b = results
        if a.status != b.status and "unsupported" in (a.status, b.status):
            # one side skipped what the other ran (its observations stop there): a coverage gap
            what = a.detail if a.status == "unsupported" else b.detail
            lacking = self.sides[0].name if a.status == "unsupported" else self.sides[1].name
            self.stats.gaps[f"{o['op']}: {lacking} lacks {what}"] += 1
            if not self.allow_gaps:
                raise Finding("gap", step, o, f"{lacking} lacks {what}; the other side ran it",
                              f"{a.status} {a.detail}".strip(), f"{b.status} {b.detail}".strip())
            self.halted = True
            return
        left, right = [str(x) for x in a.observations], [str(x) for x in b.observations]
        if left != right:
            i = next((k for k, (x, y) in enumerate(zip(left, right, strict=False)) if x != y), min(len(left),
                                                                                              len(right)))
            show_l = left[i] if i < len(left) else f"(no call: {a.status} {a.detail})".rstrip()
            show_r = right[i] if i < len(right) else f"(no call: {b.status} {b.detail})".rstrip()
            raise Finding("divergence", step, o, f"call {i} of the operation differs", show_l, show_r)
        if a.status != b.status:
            raise Finding("divergence", step, o, "one side ran the operation, the other did not",
                          f"{a.status} {a.detail}".strip(), f"{b.status} {b.detail}".strip())
        if a.status in ("notrun", "unsupported"):
            self.stats.not_run[f"{o['op']}: {a.detail}"] += 1
            return
        if a.status == "absent":
            return
        self.stats.operations += 1
        self.stats.per_op[o["op"]] += 1
        for obs in a.observations:
            kind = obs.outcome[1] if obs.outcome[0] in ("errno", "refused") else obs.outcome[0]
            self.stats.outcomes[f"{obs.method}: {kind}"] += 1

    def check_invariants(self) -> None:
        for side in self.sides:
            try:
                side.check_invariants()
            except AssertionError as exc:
                o = self.ops[-1] if self.ops else {"op": "(start)"}
                f = Finding("invariant", max(len(self.ops) - 1, 0), o,
                            f"{side.name} invariant violated: {exc}{_where(exc)}")
                self._found(f)
                raise f from exc

    def close(self) -> None:
        errors = []
        for side in self.sides:
            try:
                side.close()
            except Exception as exc:
                errors.append(f"{side.name}: {type(exc).__name__}: {exc}")
        if errors:
            f = Finding("exception", len(self.ops), {"op": "(close)"},
                        "closing the backends failed: " + "; ".join(errors))
            self._found(f)
            raise f


def replay(left: BackendFactory, right: BackendFactory, ops: list[Op], allow_gaps: bool = False,
           stats: Stats | None = None, names: tuple[str, str] = ("model", "kernel")) -> Finding | None:
    """Run a saved sequence on both sides; returns the finding or None."""
    run = Lockstep(left, right, stats, allow_gaps, names)
    try:
        for o in ops:
            run.apply(o)
            run.check_invariants()
    except Finding as f:
        with contextlib.suppress(Finding):  # the first finding is the one to report
            run.close()
        return f
    try:
        run.close()
    except Finding as f:
        return f
    return None


# How many rules each kind of target gets (hypothesis picks among rules evenly): most behaviour lies in what is
# done to mappings and files, little in the system-wide calls.
GROUP_WEIGHTS = {None: 1, "vm": 2, "gmem": 3, "map": 4, "vcpu": 1, "child": 1}


def _make_rule(target: str | None, specs: list[OpSpec], copy: int = 0) -> Callable[..., None]:
    """One rule for every operation on ``target``'s kind: it draws the operation (an operation of weight n is
    n times as likely) and its fields. Few rules keep hypothesis's per-step cost low."""
    weighted = [spec for spec in specs for _ in range(spec.weight)]
    drawn = {spec.name: spec.strategy() for spec in specs}  # built once: hypothesis caches what it has seen

    def step(self: LockstepMachine, o: Op) -> None:
        spec = OPS[o["op"]]
        if spec.when is not None and not self.run.enabled(spec.when):
            return  # e.g. a third fork: not drawn as far as the run is concerned
        self.run.apply(o)

    name = f"on_{target or 'system'}" + (f"_{copy}" if copy else "")
    step.__name__ = name
    step.__qualname__ = f"LockstepMachine.{name}"
    make_rule = cast(Callable[..., Callable[[Callable[..., None]], Callable[..., None]]], rule)
    checked: Callable[..., None] = precondition(lambda self: self.run.has(target))(
        make_rule(o=st.sampled_from(weighted).flatmap(lambda spec: drawn[spec.name]))(step))
    return checked


class LockstepMachine(RuleBasedStateMachine):
    """One rule per kind of target of the operations in :data:`~.fuzz_ops.OPS` (system, vm, gmem, map, vcpu,
    child); built per run by :func:`machine_for`."""

    factory: Callable[[], Lockstep]
    on_start: Callable[[Lockstep], None]

    def __init__(self) -> None:
        super().__init__()
        self.run = type(self).factory()
        type(self).on_start(self.run)

    @initialize(depth=st.sampled_from([5, 5, 5, 4, 3, 2, 1, 0]), type=st.integers(0, 3),
                size=st.sampled_from([16, 64, 4]), flags=st.sampled_from([3, 3, 3, 1, 0, 2]),
                slot_pages=st.sampled_from([4, 16, 1]), uaddr=st.booleans())
    def setup(self, **values: Any) -> None:
        """Most sequences start from a VM with a mapped guest_memfd bound to a slot and a vCPU (so guest and host
        accesses reach memory); ``depth`` says how much of that (0: nothing). Recorded as ordinary operations."""
        for o in setup_ops(**values):
            self.run.apply(o)
            self.run.check_invariants()

    @invariant()
    def model_invariants(self) -> None:
        self.run.check_invariants()

    def teardown(self) -> None:
        try:
            self.run.close()
        except Finding:
            if not self.run.failed:
                raise  # after a finding, closing errors would hide it


def machine_for(factory: Callable[[], Lockstep], on_start: Callable[[Lockstep], None],
                ops: list[str] | None = None) -> type[LockstepMachine]:
    """A state machine class whose runs are lockstep runs from ``factory`` over ``ops`` (default: all)."""
    names = ops if ops is not None else list(OPS)
    groups: dict[str | None, list[OpSpec]] = {}
    for name in names:
        groups.setdefault(OPS[name].target, []).append(OPS[name])
    attrs: dict[str, Any] = {}
    for target, specs in groups.items():
        for copy in range(GROUP_WEIGHTS.get(target, 1)):
            rule_fn = _make_rule(target, specs, copy)
            attrs[rule_fn.__name__] = rule_fn
    attrs["factory"] = staticmethod(factory)
    attrs["on_start"] = staticmethod(on_start)
    return type("LockstepMachine", (LockstepMachine,), attrs)
