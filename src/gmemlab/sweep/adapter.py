"""The sweep's one coupling with the simulator: check a run's inputs, run it, flatten its result.

Everything :mod:`gmemlab.sweep` knows about :mod:`gmemlab.sim` is in this module, and it uses only the
simulator's public API (``sim/run.py``: ``run_scenario``, ``params``, ``check_policy``, ``effective_policy``;
``workload/scenario.py``: ``load_scenario``, ``parse_scenario``, ``builtin_names``; ``sim/costs.py``:
``CostTable`` with its ``--costs`` loader, and its rows). The result of a run is whatever JSON-shaped object
``RunResult.as_json()`` returns, flattened generically by :func:`flatten` (nested keys joined with ``.``), so a
change of the result's shape (new time results, provenance shares, ...) needs no change here or anywhere else
in the sweep package.

The two functions the rest of the package calls:

* :func:`describe` -- validate (scenario, policy, profile, overrides, cost changes) as the simulator would and
  return every parameter after overrides as ``{"params.<key>": value}`` (raises :class:`UsageError`);
* :func:`run_one` -- run it and return the flattened result columns.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..model.policy import POLICIES
from ..sim import costs as sim_costs
from ..sim import flow as sim_flow
from ..sim import run as sim_run
from ..workload import scenario as sim_scenario

# Result keys that are not one number per run: the per-event series ``gmemlab run --json`` prints for plots
# of one run. Kept out of rows so a row stays a few KiB (one run's series is ~13 KiB of JSON).
DROPPED_RESULT_KEYS = frozenset({"series"})

COST_FIELDS = ("weight", "per_vcpu")
INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class ScenarioRef:
    """A scenario as a task carries it: a built-in name, or a file's text (so remote workers need no file)."""

    name: str
    source: str = ""
    text: str | None = None

    @property
    def label(self) -> str:
        return self.source or self.name


def builtin_scenarios() -> list[str]:
    return sim_scenario.builtin_names()


def scenario_ref(name_or_path: str, base: Path | None = None) -> ScenarioRef:
    """A built-in scenario by name, else a TOML file (relative to ``base``); raises ValueError(reason)."""
    if name_or_path in builtin_scenarios():
        return ScenarioRef(name_or_path)
    path = Path(name_or_path)
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.is_file():
        close = _close(name_or_path, builtin_scenarios())
        raise ValueError(f"no built-in scenario or file {name_or_path!r}{close}")
    try:
        return ScenarioRef(path.stem, str(path), path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read scenario file {str(path)!r}: {exc}") from None


def policies() -> list[str]:
    return list(POLICIES)


def _takes(name: str) -> bool:
    return name in inspect.signature(sim_run.run_scenario).parameters


def profiles() -> tuple[str, ...]:
    """Model profiles the simulator can run a scenario under. Today it takes no profile and runs one
    (``sim/machine.py``'s ``PROFILE``); once ``run_scenario`` takes ``profile=``, every model profile."""
    if _takes("profile"):
        from ..uapi import PROFILES

        return tuple(PROFILES)
    return (implicit_profile(),)


def implicit_profile() -> str:
    """The profile the simulator uses when it takes none ("" if it does not say)."""
    try:
        from ..sim import machine
    except ImportError:
        return ""
    return str(getattr(machine, "PROFILE", ""))


def profile_selectable() -> bool:
    return _takes("profile")


# --- cost tables ------------------------------------------------------------------------------------

CostChange = tuple[str, str, Any]  # (row id, field, value)


def cost_row_ids() -> dict[str, bool]:
    """Row id -> whether the row has a weight (informational rows have none)."""
    return {row.id: row.weight is not None for row in sim_costs.DEFAULT_ROWS}


def check_cost_change(row_id: str, fld: str, value: Any) -> None:
    """Raise ValueError(reason) unless ``rows.<row_id>.<fld> = value`` is a valid change of the table."""
    ids = cost_row_ids()
    if row_id not in ids:
        raise ValueError(f"no cost row {row_id!r}{_close(row_id, list(ids))}")
    if fld not in COST_FIELDS:
        raise ValueError(f"cost rows take {' or '.join(COST_FIELDS)}, not {fld!r}{_close(fld, list(COST_FIELDS))}")
    if fld == "weight" and not ids[row_id]:
        raise ValueError(f"row {row_id} is informational and has no weight")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number >= 0, got {value!r}")


def cost_changes_from_file(path: Path) -> tuple[CostChange, ...]:
    """The ``[rows.<id>]`` entries of a ``--costs`` file, in order, after the simulator's loader accepted it
    (its errors name the file, the key and the reason)."""
    sim_costs.load_cost_table(path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    return tuple((str(row_id), str(fld), value) for row_id, fields in raw.get("rows", {}).items()
                 for fld, value in fields.items())


def cost_table(changes: Sequence[CostChange], label: str = "") -> sim_costs.CostTable:
    """The default table with ``changes`` applied by the simulator's own ``--costs`` loader (so an explicit
    weight on a derived row replaces the derivation exactly as ``gmemlab run --costs`` does)."""
    base = sim_costs.CostTable()
    if not changes:
        return base
    rows: dict[str, dict[str, Any]] = {}
    for row_id, fld, value in changes:
        rows.setdefault(row_id, {})[fld] = value
    text = "".join(f"[rows.{json.dumps(rid)}]\n" + "".join(f"{fld} = {toml_literal(v)}\n" for fld, v in fields.items())
                   for rid, fields in rows.items())
    with tempfile.TemporaryDirectory(prefix="gmemlab-costs-") as tmp:
        path = Path(tmp) / "costs.toml"
        path.write_text(text, encoding="utf-8")
        table = base.with_overrides(path)
    return sim_costs.CostTable(table.rows, f"{base.source} + {label or 'changes'}")


def costs_identity(changes: Sequence[CostChange], label: str = "") -> dict[str, Any]:
    """``cost_table.version`` (the table's version, or its source when it has none) and ``cost_table.hash`` (of every
    row's weight, per-vCPU weight and tag: what prices a run)."""
    table = _cached_table(tuple(changes), label)
    rows = [(r.id, r.weight, r.per_vcpu, r.tag, r.counters, r.category, getattr(r, "of", None)) for r in table.rows]
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    return {"cost_table.version": str(getattr(table, "version", table.source)), "cost_table.hash": digest}


@lru_cache(maxsize=256)
def _cached_table(changes: tuple[CostChange, ...], label: str) -> sim_costs.CostTable:
    return cost_table(changes, label)


# --- one run ----------------------------------------------------------------------------------------


def toml_literal(value: Any) -> str:
    """A value as the right-hand side of ``--set key=value`` (TOML, so strings stay strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for every str (JSON escapes are TOML escapes)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a TOML value: {value!r}")


def set_args(overrides: Sequence[tuple[str, Any]]) -> list[str]:
    """``(("guest_mem", "1GiB"), ("accept.mode", "true"))`` -> ``['guest_mem=1GiB', 'accept.mode="true"']``: the
    simulator's ``--set`` strings, as a user would type them (a string is quoted only where ``--set`` would
    otherwise read it as another TOML value)."""
    return [f"{key}={_set_value(value)}" for key, value in overrides]


def _set_value(value: Any) -> str:
    if isinstance(value, str) and value and value == value.strip():
        try:
            tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError:
            return value  # --set reads text that is not TOML as that very string
    return toml_literal(value)


def _load(ref: ScenarioRef, overrides: Sequence[tuple[str, Any]]) -> sim_scenario.Scenario:
    sets = set_args(overrides)
    if ref.text is None:
        return sim_scenario.load_scenario(ref.name, sets)
    return sim_scenario.parse_scenario(ref.text, ref.source, ref.name, sets)


def _profile_kwargs(profile: str) -> dict[str, str]:
    if profile_selectable():
        return {"profile": profile}
    if profile not in ("", implicit_profile()):
        raise UsageError(f"profile {profile}: this simulator runs only {implicit_profile() or 'its own profile'}")
    return {}


def describe(ref: ScenarioRef, policy: str | None, profile: str,
             overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Every parameter of the run after overrides, as ``{"params.<key>": value}`` (``params.policy`` is the
    run's: ``policy``, or the scenario's own when None); raises UsageError (the simulator's message) when the
    scenario, an override, the policy or the profile is invalid."""
    sc = _load(ref, overrides)
    policy = policy or sc.policy
    sim_run.effective_policy(sim_run.check_policy(policy), sc.merge)
    _profile_kwargs(profile)
    # The kernel the run will use (the scenario's profile key when the sweep names none), refused here, at
    # expansion, when it cannot run the scenario's flow, as the run itself would refuse it.
    _, run_flow = sim_flow.flow_for(sc, profile or None)
    return flatten({**sim_run.params(sc), "policy": policy, "profile": run_flow.profile}, "params.")


def run_one(ref: ScenarioRef, policy: str, profile: str, seed: int, overrides: Sequence[tuple[str, Any]],
            costs: Sequence[CostChange] = (), costs_label: str = "") -> dict[str, Any]:
    """Run one simulation and return its result flattened into columns (see :func:`flatten`)."""
    sc = _load(ref, overrides)
    table = _cached_table(tuple(costs), costs_label)
    kwargs: dict[str, Any] = dict(_profile_kwargs(profile))
    if _takes("overrides"):
        kwargs["overrides"] = set_args(overrides)  # titles and JSON name them
    result = sim_run.run_scenario(sc, policy, seed, table, **kwargs)
    out = result.as_json()
    return flatten({k: v for k, v in out.items() if k not in DROPPED_RESULT_KEYS})


# --- flattening -------------------------------------------------------------------------------------


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": leaf}``. Leaves are None, bool, int, float or str; a list becomes
    its JSON text (a column holds one value per run); a non-finite float becomes None (no NaN in a row)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value, default=str, allow_nan=False) if _finite(value) else None
        elif isinstance(value, float) and not math.isfinite(value):
            out[name] = None
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            out[name] = str(value)
        elif value is None or isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    return True


def _close(word: str, known: Sequence[str]) -> str:
    import difflib

    match = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
