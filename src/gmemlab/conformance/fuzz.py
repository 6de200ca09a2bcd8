"""Differential fuzzing: hypothesis drives two backends in lockstep and shrinks any difference.

:func:`fuzz` runs the :mod:`.lockstep` state machine (one rule per operation of :mod:`.fuzz_ops`) for
``examples`` sequences of up to ``max_ops`` operations each. The first finding (a divergence, an exception
inside a backend, a broken model invariant, or a coverage gap) is shrunk by hypothesis to a minimal sequence;
:class:`FuzzReport` carries it with the counts of the whole run. A sequence is saved as JSON
(:func:`dump_sequence`) and :func:`load_sequence` reads it back for ``gmemlab fuzz --replay``, refusing a
malformed file with a message that names the problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from .fuzz_ops import OPS, Op
from .lockstep import BackendFactory, Finding, Lockstep, Stats, machine_for, replay

DEFAULT_EXAMPLES = 200  # sequences per run of `gmemlab fuzz` unless --examples says otherwise
DEFAULT_MAX_OPS = 50  # operations per sequence (hypothesis runs this many unless it shrinks)
# Examples per hypothesis run: a run's later examples are mostly mutations of its earlier ones (near-duplicate
# setups and op mixes), so a budget is spent as many short runs, each from its own seed derived from the run's.
ROUND = 20
FORMAT = "gmemlab-fuzz-sequence"


@dataclass
class FuzzReport:
    sequences: int = 0
    operations: int = 0
    finding: Finding | None = None
    ops: list[Op] = field(default_factory=list)  # the minimal sequence of the finding
    stats: Stats = field(default_factory=Stats)
    flaky: bool = False  # the finding did not reproduce when hypothesis re-ran it

    @property
    def ran_nothing(self) -> bool:
        return self.sequences == 0 or self.operations == 0


def fuzz(left: BackendFactory, right: BackendFactory, examples: int = DEFAULT_EXAMPLES, seed_value: int = 0,
         max_ops: int = DEFAULT_MAX_OPS, allow_gaps: bool = False,
         progress: Callable[[int], None] | None = None, ops: list[str] | None = None,
         names: tuple[str, str] = ("model", "kernel")) -> FuzzReport:
    """Run ``examples`` lockstep sequences; stop at the first finding and shrink it to a minimal sequence.

    Exceptions that are not findings (a bug in the fuzzer itself) propagate to the caller."""
    stats = Stats()
    report = FuzzReport(stats=stats)
    found: list[tuple[Finding, list[Op]]] = []

    def factory() -> Lockstep:
        return Lockstep(left, right, stats, allow_gaps, names)

    def on_start(run: Lockstep) -> None:
        stats.sequences += 1
        run.on_finding = lambda f, seq: found.append((f, seq))
        if progress is not None:
            progress(stats.sequences)

    machine = machine_for(factory, on_start, ops)
    for first in range(0, examples, ROUND):
        config = settings(max_examples=min(ROUND, examples - first), stateful_step_count=max_ops, deadline=None,
                          database=None, suppress_health_check=list(HealthCheck), phases=(Phase.generate,),
                          report_multiple_bugs=False, derandomize=False, verbosity=Verbosity.quiet,
                          print_blob=False)
        try:
            run_state_machine_as_test(seed(seed_value << 32 | first // ROUND)(machine), settings=config)
        except Finding:
            pass
        except BaseExceptionGroup as group:  # hypothesis's FlakyFailure: the finding did not reproduce
            if not group.subgroup(Finding):
                raise
            report.flaky = True
        if found:
            break
    if found:
        # Hypothesis re-runs the shrunk example last: the last finding is the minimal one. Deleting steps of a
        # state machine whose refs pick objects by index is hard for its shrinker; finish by deleting
        # operations one by one while the same finding remains (1-minimal).
        report.finding, report.ops = minimize(left, right, *found[-1], allow_gaps=allow_gaps, names=names)
    report.sequences, report.operations = stats.sequences, stats.operations
    return report


def same_finding(a: Finding, b: Finding) -> bool:
    """The same failure: kind, the operation it happened at, and for exceptions the side and message start."""
    if a.kind == "invariant":
        return b.kind == "invariant" and a.detail.split(":")[0] == b.detail.split(":")[0]
    if (a.kind, a.op["op"]) != (b.kind, b.op["op"]):
        return False
    return a.kind != "exception" or a.detail.split(":")[:2] == b.detail.split(":")[:2]


def minimize(left: BackendFactory, right: BackendFactory, finding: Finding, ops: list[Op],
             allow_gaps: bool = False, names: tuple[str, str] = ("model", "kernel"),
             budget: int = 400) -> tuple[Finding, list[Op]]:
    """Delete operations while the same finding remains: chunks first, then single operations, until no
    deletion keeps it (or ``budget`` replays were spent)."""
    ops = list(ops[: finding.step + 1])
    tries = 0

    def attempt(candidate: list[Op]) -> Finding | None:
        nonlocal tries
        tries += 1
        f = replay(left, right, candidate, allow_gaps, names=names)
        return f if f is not None and same_finding(f, finding) else None

    chunk = max(1, len(ops) // 2)
    while chunk >= 1 and tries < budget:
        changed = False
        i = len(ops) - 1 - chunk  # never drop the failing (last) operation
        while i >= 0 and tries < budget:
            candidate = ops[:i] + ops[i + chunk:]
            f = attempt(candidate)
            if f is not None:
                finding, ops, changed = f, candidate[: f.step + 1], True
            i -= chunk
            i = min(i, len(ops) - 1 - chunk)
        if not changed:
            chunk //= 2
    return finding, ops


def compare_sequence(left: BackendFactory, right: BackendFactory, ops: list[Op], allow_gaps: bool = False,
                     names: tuple[str, str] = ("model", "kernel")) -> Finding | None:
    """Replay one sequence in lockstep; the finding, or None when both sides agree throughout."""
    return replay(left, right, ops, allow_gaps, names=names)


# -- sequence files ------------------------------------------------------------------------------------------
def dump_sequence(ops: list[Op], finding: Finding | None = None, **meta: Any) -> str:
    doc: dict[str, Any] = {"format": FORMAT, "version": 1, **meta, "ops": ops}
    if finding is not None:
        doc["finding"] = finding.as_json()
    return json.dumps(doc, indent=1)


def _check_field(i: int, name: str, key: str, kind: str, value: Any, choices: tuple[str, ...]) -> str | None:
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{key} must be an integer"
    if kind == "bool" and not isinstance(value, bool):
        return f"{key} must be true or false"
    if kind == "ref" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        return f"{key} must be a non-negative integer (an object reference)"
    if kind == "optref" and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                   or value < 0):
        return f"{key} must be null or a non-negative integer (an object reference)"
    if kind == "str" and value not in choices:
        return f"{key} must be one of {', '.join(choices)}"
    return None


def load_sequence(text: str) -> list[Op]:
    """Parse a saved sequence (the object :func:`dump_sequence` writes, or a bare JSON list of operations);
    raises ValueError naming what is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if isinstance(doc, dict):
        if doc.get("format") != FORMAT:
            raise ValueError(f"a JSON object must have \"format\": \"{FORMAT}\" (a file gmemlab fuzz saved)")
        doc = doc.get("ops")
    if not isinstance(doc, list) or not all(isinstance(o, dict) and "op" in o for o in doc):
        raise ValueError("a sequence is a JSON list of objects, each with an 'op' key")
    for i, o in enumerate(doc):
        name = o["op"]
        if not isinstance(name, str) or name not in OPS:
            raise ValueError(f"operation {i}: unknown op {name!r} (known: {', '.join(OPS)})")
        kinds = OPS[name].kinds()
        missing = {k for k, f in kinds.items() if not f.optional} - set(o)
        if missing:
            raise ValueError(f"operation {i} ({name}): missing {', '.join(sorted(missing))}")
        extra = set(o) - set(kinds) - {"op"}
        if extra:
            raise ValueError(f"operation {i} ({name}): unknown field {', '.join(sorted(extra))}")
        for key, f in kinds.items():
            if key not in o:
                continue  # an optional field left out
            problem = _check_field(i, name, key, f.kind, o[key], f.choices)
            if problem:
                raise ValueError(f"operation {i} ({name}): {problem}")
    return doc
