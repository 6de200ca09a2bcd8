"""The interleaving explorer: a deterministic scheduler over the paths' step generators.

A *state* is the shared :class:`~gmemlab.races.world.World` plus, per thread, its position in the thread's
execution tree. Paths are deterministic given the results their steps returned, so a thread's local state
(program counter and locals) is identified by the sequence of results it has received; those sequences are
interned as node ids of a per-thread trie (:class:`ThreadTrie`), which also memoises each node's next step.
A generator is advanced at most once per trie node; generators are rebuilt by replaying a result history
only when a thread's execution branches.

* :meth:`Explorer.exhaustive` — breadth-first search over the state graph with a visited set (state
  caching). Every reachable state of the configuration is visited, and the first violation found has a
  shortest trace (fewest steps); among equally short ones, running the previous thread first keeps the
  number of preemptions low. An optional preemption bound prunes schedules with more preemptions.
* :meth:`Explorer.random` — seeded random schedules for configurations too large to enumerate; a violating
  schedule is shrunk greedily (1-minimal: removing any single step loses the violation).
"""

from __future__ import annotations

import random as _random
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ..checks import check_number
from ..errors import UsageError
from .properties import PROPERTY_TEXT, check_invariants
from .protocols import Setup
from .steps import Done, Path, Step, StepCtx
from .world import SHARED, World


class ThreadTrie:
    """The execution tree of one thread: node -> next step, (node, result) -> child node."""

    def __init__(self, setup: Setup, tid: int) -> None:
        spec = setup.threads[tid]
        self._body = setup.protocol.paths[spec.path].fn
        self._indices = spec.indices
        self._tid = tid
        self._disabled = setup.disabled | setup.protocol.disabled
        self.steps: list[Step | Done] = []
        self._children: list[dict[Hashable, int]] = []
        self._history: list[tuple[Hashable, ...]] = []
        self._live: dict[int, Path] = {}
        gen = self._make()
        try:
            first: Step | Done = next(gen)
        except StopIteration as stop:
            first = Done(stop.value)
        self._add(first, (), gen)

    def _make(self) -> Path:
        return self._body(StepCtx(self._tid, self._disabled), self._indices)

    def _add(self, step: Step | Done, history: tuple[Hashable, ...], gen: Path | None) -> int:
        node = len(self.steps)
        if not isinstance(step, Step | Done):
            raise UsageError(f"path yielded {step!r}, not a Step")
        self.steps.append(step)
        self._children.append({})
        self._history.append(history)
        if gen is not None and isinstance(step, Step):
            self._live[node] = gen
        return node

    def advance(self, node: int, result: Hashable) -> int:
        kids = self._children[node]
        child = kids.get(result)
        if child is not None:
            return child
        gen = self._live.pop(node, None) or self._rebuild(node)
        live: Path | None = gen
        try:
            step: Step | Done = gen.send(result)
        except StopIteration as stop:
            step, live = Done(stop.value), None
        child = self._add(step, (*self._history[node], result), live)
        kids[result] = child
        return child

    def _rebuild(self, node: int) -> Path:
        gen = self._make()
        next(gen)
        for result in self._history[node]:
            gen.send(result)
        return gen

    def sites(self) -> set[str]:
        return {s.site for s in self.steps if isinstance(s, Step) and s.site}


@dataclass
class TraceStep:
    step: int
    thread: int
    thread_step: int
    path: str
    label: str

    def as_dict(self) -> dict[str, object]:
        return {"step": self.step, "thread": self.thread, "thread_step": self.thread_step,
                "path": self.path, "label": self.label}


@dataclass
class Violation:
    prop: str
    message: str
    trace: list[TraceStep]
    preemptions: int

    @property
    def text(self) -> str:
        return PROPERTY_TEXT.get(self.prop, self.prop)

    def as_dict(self) -> dict[str, object]:
        return {"property": self.prop, "description": self.text, "message": self.message,
                "steps": len(self.trace), "preemptions": self.preemptions,
                "trace": [t.as_dict() for t in self.trace]}


@dataclass
class Result:
    protocol: str
    threads: str
    init: str
    mode: str
    states: int = 0
    transitions: int = 0
    seconds: float = 0.0
    complete: bool = True  # exhaustive search visited every reachable state (no bound, no cap)
    stopped: str = ""  # why the search is incomplete: "preemption bound", "--max-states", "time limit", "random"
    violation: Violation | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    sites: set[str] = field(default_factory=set)
    runs: int = 0

    @property
    def states_per_second(self) -> float:
        return self.states / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, object]:
        return {
            "protocol": self.protocol, "threads": self.threads, "init": self.init, "mode": self.mode,
            "states": self.states, "transitions": self.transitions, "seconds": round(self.seconds, 4),
            "states_per_second": round(self.states_per_second) if self.seconds > 0 else None,
            "complete": self.complete, "stopped": self.stopped or None, "runs": self.runs,
            "violation": self.violation.as_dict() if self.violation else None,
            "outcomes": dict(sorted(self.outcomes.items())),
        }


Nodes = tuple[int, ...]
Key = Hashable
Progress = Callable[[int, int, float], None]  # (states, transitions, seconds so far)
PROGRESS_EVERY = 4096  # expanded states between progress reports and time-limit checks


class Explorer:
    """Explore the interleavings of ``setup``'s threads."""

    def __init__(self, setup: Setup, preemption_bound: int | None = None,
                 ignore: frozenset[str] = frozenset()) -> None:
        if preemption_bound is not None and preemption_bound < 0:
            raise UsageError("--preemptions must be >= 0")
        self.setup = setup
        self.bound = preemption_bound
        self.ignore = ignore  # properties not checked (e.g. to look past a ghost property)
        self.tries = [ThreadTrie(setup, t) for t in range(len(setup.threads))]

    # -- one transition ----------------------------------------------------------------------------------
    def initial(self) -> tuple[World, Nodes]:
        proto = self.setup.protocol
        world = World(self.setup.npages, self.setup.init, per_index=proto.per_index,
                      init_shared=not proto.per_index and self.setup.init == SHARED)
        return world, (0,) * len(self.tries)

    def enabled(self, w: World, nodes: Nodes, only: frozenset[int] | None = None) -> tuple[list[int], bool]:
        ready: list[int] = []
        alive = False
        for t, node in enumerate(nodes):
            if only is not None and t not in only:
                continue
            step = self.tries[t].steps[node]
            if isinstance(step, Done):
                continue
            alive = True
            if step.enabled is None or step.enabled(w, t):
                ready.append(t)
        return ready, alive

    def transition(self, w: World, nodes: Nodes, t: int) -> tuple[World, Nodes, Hashable, tuple[str, str] | None]:
        step = self.tries[t].steps[nodes[t]]
        assert isinstance(step, Step)
        w2 = w.clone()
        result = step.run(w2, t)
        child = self.tries[t].advance(nodes[t], result)
        nodes2 = (*nodes[:t], child, *nodes[t + 1 :])
        violation = next((v for v in w2.violations if v[0] not in self.ignore), None)
        w2.violations = ()
        if violation is None and isinstance(self.tries[t].steps[child], Done) and "deadlock" not in self.ignore:
            held = w2.held_by(t)
            if held:
                names = ", ".join(n if i < 0 else f"{n}({i})" for n, i in held)
                violation = ("deadlock", f"T{t} returns still holding {names}")
        if violation is None:
            violation = check_invariants(w2, self.ignore)
        return w2, nodes2, result, violation

    def _outcome(self, nodes: Nodes) -> str:
        parts = []
        for t, node in enumerate(nodes):
            step = self.tries[t].steps[node]
            parts.append(f"T{t}={step.outcome}" if isinstance(step, Done) else f"T{t}=(not run)")
        return " ".join(parts)

    # -- traces -------------------------------------------------------------------------------------------
    def replay(self, schedule: list[int]) -> tuple[list[tuple[int, int, Hashable]], int, tuple[str, str] | None]:
        """Run ``schedule`` (thread ids; entries for blocked or finished threads are skipped). Returns the
        executed (thread, node, result) list up to the first violation, the preemptions and the violation."""
        w, nodes = self.initial()
        executed: list[tuple[int, int, Hashable]] = []
        last: int | None = None
        preemptions = 0
        for t in schedule:
            ready, alive = self.enabled(w, nodes)
            if t not in ready:
                continue
            if last is not None and t != last and last in ready:
                preemptions += 1
            node = nodes[t]
            w, nodes, result, violation = self.transition(w, nodes, t)
            executed.append((t, node, result))
            last = t
            if violation:
                return executed, preemptions, violation
        ready, alive = self.enabled(w, nodes)
        if alive and not ready and "deadlock" not in self.ignore:
            return executed, preemptions, ("deadlock", self._blocked_message(nodes))
        return executed, preemptions, None

    def _blocked_message(self, nodes: Nodes) -> str:
        waiting = []
        for t, node in enumerate(nodes):
            step = self.tries[t].steps[node]
            if isinstance(step, Step):
                waiting.append(f"T{t} waits at '{step.label}'")
        return "all unfinished threads are blocked: " + "; ".join(waiting)

    def make_violation(self, schedule: list[int]) -> Violation:
        executed, preemptions, violation = self.replay(schedule)
        assert violation is not None, "schedule does not reproduce the violation"
        counts = [0] * len(self.tries)
        trace = []
        for n, (t, node, result) in enumerate(executed, 1):
            counts[t] += 1
            step = self.tries[t].steps[node]
            assert isinstance(step, Step)
            trace.append(TraceStep(n, t, counts[t], self.setup.threads[t].path, step.describe(result)))
        return Violation(violation[0], violation[1], trace, preemptions)

    # -- exhaustive ---------------------------------------------------------------------------------------
    def exhaustive(self, max_states: int | None = None, only: frozenset[int] | None = None,
                   progress: Progress | None = None, deadline: float | None = None) -> Result:
        """Breadth-first search with state caching (and the preemption bound, if any). ``only`` restricts
        the schedule to a subset of the threads (the others never run). ``progress(states, transitions,
        seconds)`` is called every :data:`PROGRESS_EVERY` expanded states; the search stops, incomplete, once
        ``time.monotonic()`` passes ``deadline``."""
        res = self._result("exhaustive" if self.bound is None else f"exhaustive, preemptions <= {self.bound}")
        start = time.perf_counter()
        expanded = 0
        bound = self.bound
        w0, n0 = self.initial()
        k0: Key = (w0.key(), n0, None) if bound is not None else (w0.key(), n0)
        parent: dict[Key, tuple[Key, int] | None] = {k0: None}
        best: dict[Key, int] = {k0: 0}
        queue: deque[tuple[World, Nodes, Key, int | None, int]] = deque([(w0, n0, k0, None, 0)])
        found: list[int] | None = None
        while queue and found is None:
            w, nodes, key, last, pre = queue.popleft()
            if bound is not None and best[key] < pre:
                continue
            expanded += 1
            if expanded % PROGRESS_EVERY == 0:
                if progress is not None:
                    progress(len(parent), res.transitions, time.perf_counter() - start)
                if deadline is not None and time.monotonic() > deadline:
                    res.complete, res.stopped = False, "time limit"
                    break
            ready, alive = self.enabled(w, nodes, only)
            if not ready:
                if alive and "deadlock" not in self.ignore:
                    found = self._schedule(parent, key)
                else:
                    res.outcomes[self._outcome(nodes)] += 1
                continue
            order = [last, *(t for t in ready if t != last)] if last in ready else ready
            for t in order:
                p = pre + (1 if last is not None and t != last and last in ready else 0)
                if bound is not None and p > bound:
                    res.complete, res.stopped = False, res.stopped or "preemption bound"
                    continue
                w2, nodes2, _result, violation = self.transition(w, nodes, t)
                res.transitions += 1
                if violation:
                    found = [*self._schedule(parent, key), t]
                    break
                k2: Key = (w2.key(), nodes2, t) if bound is not None else (w2.key(), nodes2)
                if k2 in parent and (bound is None or best[k2] <= p):
                    continue
                parent[k2] = (key, t)
                best[k2] = p
                queue.append((w2, nodes2, k2, t, p))
            if max_states is not None and len(parent) >= max_states and queue:
                res.complete, res.stopped = False, "--max-states"
                break
        res.states = len(parent)
        res.seconds = time.perf_counter() - start
        if found is not None:
            res.violation = self.make_violation(found)
        res.sites = self.sites()
        return res

    @staticmethod
    def _schedule(parent: dict[Key, tuple[Key, int] | None], key: Key) -> list[int]:
        out: list[int] = []
        entry = parent[key]
        while entry is not None:
            key, t = entry
            out.append(t)
            entry = parent[key]
        out.reverse()
        return out

    # -- random -------------------------------------------------------------------------------------------
    def random(self, runs: int, seed: int, max_steps: int = 10_000, progress: Progress | None = None,
               deadline: float | None = None) -> Result:
        """``runs`` seeded random schedules; the first violating one is shrunk and reported. ``progress`` and
        ``deadline`` as for :meth:`exhaustive` (checked between schedules)."""
        if runs < 1:
            raise UsageError("--random needs at least 1 run")
        res = self._result(f"random, {runs} runs, seed {seed}"
                           + ("" if self.bound is None else f", preemptions <= {self.bound}"))
        res.complete, res.stopped = False, "random schedules"
        rng = _random.Random(seed)
        seen: set[Key] = set()
        start = time.perf_counter()
        found: list[int] | None = None
        for _ in range(runs):
            if res.runs and res.runs % 64 == 0:
                if progress is not None:
                    progress(len(seen), res.transitions, time.perf_counter() - start)
                if deadline is not None and time.monotonic() > deadline:
                    res.stopped = "time limit"
                    break
            res.runs += 1
            w, nodes = self.initial()
            last: int | None = None
            pre = 0
            schedule: list[int] = []
            for _ in range(max_steps):
                ready, alive = self.enabled(w, nodes)
                if not ready:
                    if alive and "deadlock" not in self.ignore:
                        found = schedule
                    else:
                        res.outcomes[self._outcome(nodes)] += 1
                    break
                choices = ready
                if self.bound is not None and pre >= self.bound and last in ready:
                    choices = [last]
                t = rng.choice(choices)
                if last is not None and t != last and last in ready:
                    pre += 1
                w, nodes, _result, violation = self.transition(w, nodes, t)
                res.transitions += 1
                schedule.append(t)
                seen.add((w.key(), nodes))
                last = t
                if violation:
                    found = schedule
                    break
            if found is not None:
                break
        res.states = len(seen)
        res.seconds = time.perf_counter() - start
        if found is not None:
            res.violation = self.minimize(self.shrink(found))
        res.sites = self.sites()
        return res

    def minimize(self, schedule: list[int], budget: int = 200_000) -> Violation:
        """A shortest violating interleaving of the threads that take part in ``schedule``: breadth-first
        search restricted to those threads (within ``budget`` states), else ``schedule`` itself."""
        shrunk = self.make_violation(schedule)
        bfs = self.exhaustive(max_states=budget, only=frozenset(schedule))
        if bfs.violation is not None and len(bfs.violation.trace) <= len(shrunk.trace):
            return bfs.violation
        return shrunk

    def shrink(self, schedule: list[int]) -> list[int]:
        """Greedy 1-minimal shrinking: drop single schedule entries while the same property still fails."""
        executed, _, violation = self.replay(schedule)
        assert violation is not None
        prop = violation[0]
        current = [t for t, _, _ in executed]

        def attempt(candidate: list[int]) -> bool:
            nonlocal current
            executed, _, violation = self.replay(candidate)
            if violation is not None and violation[0] == prop and len(executed) < len(current):
                current = [t for t, _, _ in executed]
                return True
            return False

        while True:
            before = len(current)
            for t in range(len(self.tries)):  # whole threads first
                attempt([x for x in current if x != t])
            size = len(current) // 2
            while size >= 1:  # then chunks of halving size (ddmin-style), down to single steps
                i = 0
                while i < len(current):
                    if not attempt(current[:i] + current[i + size :]):
                        i += size
                size //= 2
            if len(current) == before:
                return current

    # -- helpers ------------------------------------------------------------------------------------------
    def _result(self, mode: str) -> Result:
        return Result(self.setup.protocol.name, self.setup.describe(), self.setup.init, mode)

    def sites(self) -> set[str]:
        out: set[str] = set()
        for trie in self.tries:
            out |= trie.sites()
        return out


def explore(setup: Setup, *, random_runs: int | None = None, seed: int = 0, preemption_bound: int | None = None,
            max_states: int | None = None, progress: Progress | None = None,
            time_limit: float | None = None) -> Result:
    """Run one exploration: exhaustive unless ``random_runs`` is given. ``time_limit`` (seconds) stops it,
    incomplete (``Result.stopped == "time limit"``); ``progress(states, transitions, seconds)`` reports as it goes.

    Arguments are checked here too (the Python API): counts are integers >= 1 (``preemption_bound`` >= 0),
    the time limit a finite number > 0."""
    for name, value, low in (("random_runs", random_runs, 1), ("max_states", max_states, 1),
                             ("preemption_bound", preemption_bound, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    if time_limit is not None:
        try:
            check_number(time_limit, min=0.0)
        except ValueError as exc:
            raise UsageError(f"time_limit: {exc}") from None
        if time_limit <= 0:
            raise UsageError(f"time_limit must be more than 0 seconds, got {time_limit!r}")
    deadline = None if time_limit is None else time.monotonic() + time_limit
    explorer = Explorer(setup, preemption_bound)
    if random_runs is not None:
        return explorer.random(random_runs, seed, progress=progress, deadline=deadline)
    return explorer.exhaustive(max_states, progress=progress, deadline=deadline)
