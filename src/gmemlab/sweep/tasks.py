"""Tasks: one simulator run each, expanded from a sweep (grid x zip groups x seeds) with its input hash.

A :class:`Task` carries what a worker needs to run (:meth:`Task.job`) and, for the main process, the input
columns of its row (:attr:`Task.inputs`): sweep, scenario, policy, profile, seed, each swept or fixed
``set.<key>`` (as written) and ``cost.<row>.<field>``, the cost table's version and hash, every scenario
parameter after overrides (``params.<key>``, from the simulator) and ``input_hash``.

``input_hash`` is a SHA-256 over the resolved parameters, policy, profile, seed, cost-table hash and the gmemlab
version: two tasks that would compute the same thing share it, and re-running a sweep skips hashes already in the
dataset. Expansion validates each distinct (scenario, overrides, policy, profile) with the simulator before any
run starts, so a bad combination is a usage error naming the sweep keys that produced it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import UsageError
from . import adapter
from .spec import Axis, SweepSpec, fail


@dataclass(frozen=True)
class Job:
    """What a worker runs (kept small: it is pickled for every task)."""

    input_hash: str
    scenario: adapter.ScenarioRef
    policy: str
    profile: str
    seed: int
    overrides: tuple[tuple[str, Any], ...]
    costs: tuple[adapter.CostChange, ...]
    costs_label: str
    config: str  # hash of everything but the seed: runs of one config cost about the same (batch sizing)


@dataclass(frozen=True, eq=False)
class Task:
    """One run: its job and its row's input columns (the configuration's, shared by its seeds, with this
    run's seed and hash: a 100,000-run study keeps one column dict per configuration, not per run)."""

    job: Job
    base: Mapping[str, Any] = field(repr=False)

    @property
    def input_hash(self) -> str:
        return self.job.input_hash

    @property
    def inputs(self) -> dict[str, Any]:
        row = dict(self.base)  # "seed" and "input_hash" keep their places
        row["seed"] = self.job.seed
        row["input_hash"] = self.job.input_hash
        return row


def label(value: Any) -> str:
    """A swept value as it reads in a row (``set.guest_mem`` = ``"1GiB"``), always a string."""
    return value if isinstance(value, str) else json.dumps(value)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def make_task(scenario: adapter.ScenarioRef, policy: str | None, profile: str, seed: int,
              overrides: Sequence[tuple[str, Any]] = (), costs: Sequence[adapter.CostChange] = (),
              costs_label: str = "", sweep: str = "", extra: Mapping[str, Any] | None = None,
              _cache: dict[Any, Any] | None = None) -> Task:
    """A task for one run, validated by the simulator (raises UsageError with its message).

    This is also the entry point for other commands that run many simulations (``sensitivity``): build tasks
    with :func:`make_task` and hand them to :func:`gmemlab.sweep.runner.run_tasks`. ``extra`` adds input columns
    (e.g. ``{"cost.6.weight": 2e4}``) that are not part of the hash (they must follow from the other inputs).
    """
    overrides = tuple(overrides)
    costs = tuple(costs)
    extra = dict(extra or {})
    key = (scenario, policy, profile, json.dumps(overrides, default=str), costs, costs_label, sweep,
           json.dumps(extra, default=str))
    cached = _cache.get(key) if _cache is not None else None
    if cached is None:
        params = adapter.describe(scenario, policy, profile, overrides)
        policy_run = str(params["params.policy"])
        identity = adapter.costs_identity(costs, costs_label)
        config = _digest({"params": params, "profile": profile, "costs": identity["cost_table.hash"],
                          "version": __version__})
        base: dict[str, Any] = {
            "sweep": sweep,
            "scenario": scenario.name,
            "scenario_source": scenario.source or "built-in",
            "policy": policy_run,
            "profile": profile or str(params["params.profile"]),  # the kernel the run uses
            "seed": None,
            **{f"set.{k}": label(v) for k, v in overrides},
            **extra,
            **identity,
            **params,
            "input_hash": None,
        }
        cached = (base, config)
        if _cache is not None:
            _cache[key] = cached
    base, config = cached
    input_hash = _digest({"config": config, "seed": seed})[:32]
    job = Job(input_hash, scenario, str(base["policy"]), profile, seed, overrides, costs, costs_label, config[:16])
    return Task(job, base)


def _combos(spec: SweepSpec) -> Iterator[list[tuple[Axis, Any]]]:
    """Every combination of axis values (fixed first, then the axes in file order)."""
    fixed = [(a, a.values[0]) for a in spec.fixed]
    choices = [[[(a, a.values[i]) for a in group] for i in range(len(group[0].values))] for group in spec.axes]
    for picked in itertools.product(*choices):
        yield fixed + [pair for group in picked for pair in group]


def _where(picked: Sequence[tuple[Axis, Any]]) -> str:
    return ", ".join(f"{a.where}={v!r}" for a, v in picked if len(a.values) > 1 or a.where.startswith("fixed"))


def expand(spec: SweepSpec) -> list[Task]:
    """The sweep's tasks in file order, seeds innermost, each validated by the simulator."""
    tasks: list[Task] = []
    cache: dict[Any, Any] = {}
    for picked in _combos(spec):
        values = {a.key: v for a, v in picked}
        scenario = spec.scenarios[values["scenario"]]
        overrides = tuple((k[4:], v) for k, v in values.items() if k.startswith("set."))
        cost_axes = {k: v for k, v in values.items() if k.startswith("cost.")}
        costs = spec.costs_file + tuple((k.split(".", 2)[1], k.split(".", 2)[2], v) for k, v in cost_axes.items())
        label_text = " + ".join(p for p in (spec.costs_label, "sweep" if cost_axes else "") if p)
        for seed in spec.seeds:
            try:
                tasks.append(make_task(scenario, values.get("policy"), values.get("profile", ""), seed, overrides,
                                       costs, label_text, spec.name, cost_axes, cache))
            except UsageError as exc:
                raise _blame(spec, picked, scenario, values, exc) from None
            except ValueError as exc:  # a value the simulator's parser refused outside its own checks
                raise fail(spec.source, _where(picked), str(exc)) from None
    return tasks


def _blame(spec: SweepSpec, picked: Sequence[tuple[Axis, Any]], scenario: adapter.ScenarioRef,
           values: Mapping[str, Any], exc: UsageError) -> UsageError:
    """Name the one sweep key whose value the simulator refuses on its own, else the whole combination."""
    policy, profile = values.get("policy"), values.get("profile", "")
    try:
        adapter.describe(scenario, policy, profile, ())
    except UsageError:  # the scenario refuses this policy or profile whatever is set
        return fail(spec.source, _where(picked) or "fixed", f"this combination is invalid: {exc}")
    for axis, value in picked:
        if not axis.key.startswith("set."):
            continue
        try:
            adapter.describe(scenario, policy, profile, ((axis.key[4:], value),))
        except UsageError as alone:
            index = "" if axis.where.startswith("fixed") else f"[{axis.values.index(value)}]"
            context = f"scenario {scenario.name}" + (f", policy {policy}" if policy else "")
            return fail(spec.source, f"{axis.where}{index}", f"with {context}: {alone}")
    return fail(spec.source, _where(picked) or "fixed", f"this combination is invalid: {exc}")
