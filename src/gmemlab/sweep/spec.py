"""Sweep files: a TOML parameter study validated into a :class:`SweepSpec` (errors name file, key, reason).

A sweep is a built-in name (``src/gmemlab/sweeps/<name>.toml``, listed by ``gmemlab sweep --list``) or a file::

    name = "my-study"                 # default: the file name; names the output folder results/<name>
    description = "..."
    seeds = 5                         # seeds 0..4 (or a list: seeds = [1, 7]); default [0]
    costs_file = "costs.toml"         # optional: a --costs file (relative to this file) for every run

    [fixed]                           # one value each, for every run
    scenario = "snp-lazy-accept-64g"
    set.runtime_s = 30                # any scenario key, as --set would take it
    cost."6".weight = 2e4             # a cost-table row's weight or per_vcpu (workloads.md §4)

    [grid]                            # lists: every combination (the order of the file; seeds innermost)
    policy = ["eager", "deferred"]
    set.guest_mem = ["1GiB", "16GiB"]

    [[zip]]                           # lists of one length taken element-wise; each group is one grid axis
    scenario = ["snp-lazy-accept-64g", "tdx-boot-64g"]
    set.vcpus = [16, 32]

Axis keys: ``scenario`` (a built-in name or a TOML file relative to the sweep file), ``policy``, ``profile``,
``set.<scenario key>``, ``cost.<row id>.weight|per_vcpu``. Without a policy a run uses the scenario's own.
Every number must be finite and fit in 64 bits. Combinations are checked by the simulator when the sweep is
expanded (:mod:`gmemlab.sweep.tasks`), before anything runs.
"""

from __future__ import annotations

import datetime
import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import adapter

TOP_KEYS = ("name", "description", "seeds", "costs_file", "fixed", "grid", "zip")
AXIS_ROOTS = ("scenario", "policy", "profile", "set", "cost")
MAX_SEEDS = 100_000
MAX_RUNS = 10_000_000
INT64_MAX = (1 << 63) - 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def fail(source: str, path: str, reason: str) -> UsageError:
    """``sweep.toml: grid.set.guest_mem[2]: reason``: the same shape as scenario-file errors."""
    return UsageError(f"{source}: {path}: {reason}" if path else f"{source}: {reason}")


def close_match(word: str, known: list[str]) -> str:
    match = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else f" (expected one of: {', '.join(known)})"


@dataclass(frozen=True)
class Axis:
    """One swept key with its values; ``where`` is its path in the file (``grid.set.guest_mem``)."""

    key: str
    values: tuple[Any, ...]
    where: str


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: fixed values, grid axes and zip groups (each one axis), seeds."""

    name: str
    description: str
    source: str
    seeds: tuple[int, ...]
    fixed: tuple[Axis, ...]  # single-valued
    axes: tuple[tuple[Axis, ...], ...]  # each entry one axis of the product: a grid key or a zip group
    scenarios: dict[str, adapter.ScenarioRef]  # scenario value as written -> what it names
    costs_file: tuple[adapter.CostChange, ...] = ()
    costs_label: str = ""

    @property
    def runs(self) -> int:
        n = len(self.seeds)
        for group in self.axes:
            n *= len(group[0].values)
        return n

    def keys(self) -> list[str]:
        """Every axis key, fixed first, in file order."""
        return [a.key for a in self.fixed] + [a.key for group in self.axes for a in group]


# --- built-ins --------------------------------------------------------------------------------------


def builtin_names() -> list[str]:
    folder = resources.files("gmemlab") / "sweeps"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_sweep(name_or_path: str) -> SweepSpec:
    """A built-in sweep by name, or a sweep file by path, validated."""
    if name_or_path in builtin_names():
        res = resources.files("gmemlab") / "sweeps" / f"{name_or_path}.toml"
        return parse_sweep(res.read_text(encoding="utf-8"), f"built-in sweep {name_or_path}", name_or_path, None)
    path = Path(name_or_path)
    if path.exists() and not path.is_file():
        raise UsageError(f"{name_or_path}: is {'a folder' if path.is_dir() else 'not a regular file'}, not a sweep "
                         "file (a TOML file or a built-in name)")
    if not path.is_file():
        hint = close_match(name_or_path, builtin_names())
        raise UsageError(f"{name_or_path}: no built-in sweep or file by that name{hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    return parse_sweep(text, str(path), path.stem, path.parent)


# --- validation -------------------------------------------------------------------------------------


def check_numbers(value: Any, path: str, source: str) -> None:
    """Reject NaN, infinities, integers outside 64 bits and TOML dates anywhere in the file, naming the key."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_numbers(item, f"{path}.{key}" if path else str(key), source)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_numbers(item, f"{path}[{i}]", source)
    elif isinstance(value, datetime.date | datetime.time):
        raise fail(source, path, f"{value} is a date or time; no sweep key takes one")
    elif isinstance(value, float) and not math.isfinite(value):
        raise fail(source, path, f"{value} is not a finite number")
    elif isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise fail(source, path, f"{value} does not fit in a signed 64-bit integer")


def _leaves(table: Any, path: str, section: str, source: str) -> list[tuple[str, str, Any]]:
    """(axis key, file path, value) for every axis key of a [fixed]/[grid]/[[zip]] table."""
    if not isinstance(table, Mapping):
        raise fail(source, section, f"expected a table, got {type(table).__name__}")
    out: list[tuple[str, str, Any]] = []
    for raw_key, value in table.items():
        head, _, rest = raw_key.partition(".")
        if rest:  # a quoted dotted key ("set.guest_mem" = ...) means the same as the bare one
            value = _nest(rest.split("."), value)
        where = f"{path}.{head}"
        if head in ("seed", "seeds"):
            raise fail(source, where, "seeds are given once, at the top of the file: seeds = 5 or seeds = [0, 1]")
        if head not in AXIS_ROOTS:
            raise fail(source, where, "unknown key" + close_match(head, list(AXIS_ROOTS)))
        if head in ("scenario", "policy", "profile"):
            out.append((head, where, value))
        elif head == "set":
            out.extend(_set_leaves(value, "set", where, source))
        else:
            out.extend(_cost_leaves(value, where, source))
    return out


def _nest(parts: list[str], value: Any) -> Any:
    for part in reversed(parts):
        value = {part: value}
    return value


def _set_leaves(value: Any, key: str, where: str, source: str) -> list[tuple[str, str, Any]]:
    if not isinstance(value, Mapping):
        if key == "set":
            raise fail(source, where, "expected a table of scenario keys, e.g. set.guest_mem = ...")
        return [(key, where, value)]
    out = []
    for sub, item in value.items():
        out.extend(_set_leaves(item, f"{key}.{sub}", f"{where}.{sub}", source))
    return out


def _cost_leaves(value: Any, where: str, source: str) -> list[tuple[str, str, Any]]:
    if not isinstance(value, Mapping):
        raise fail(source, where, "expected a table of rows, e.g. cost.\"6\".weight = ...")
    out = []
    for row, fields in value.items():
        if not isinstance(fields, Mapping):
            raise fail(source, f"{where}.{row}", "expected a table of weight and/or per_vcpu")
        for fld, item in fields.items():
            out.append((f"cost.{row}.{fld}", f"{where}.{row}.{fld}", item))
    return out


def _check_value(key: str, where: str, value: Any, source: str, base: Path | None,
                 scenarios: dict[str, adapter.ScenarioRef]) -> None:
    try:
        if key == "scenario":
            if not isinstance(value, str):
                raise ValueError(f"expected a scenario name or file, got {type(value).__name__} {value!r}")
            if value not in scenarios:
                scenarios[value] = adapter.scenario_ref(value, base)
        elif key == "policy":
            known = adapter.policies()
            if value not in known:
                raise ValueError(f"unknown policy {value!r}{close_match(str(value), known)}")
        elif key == "profile":
            known = list(adapter.profiles())
            if value not in known:
                only = "" if adapter.profile_selectable() else " (the simulator takes no profile yet)"
                raise ValueError(f"profile {value!r} cannot be simulated{only}; known: {', '.join(known)}")
        elif key.startswith("cost."):
            _, row, fld = key.split(".", 2)
            adapter.check_cost_change(row, fld, value)
        elif isinstance(value, Mapping | list) and not value:
            raise ValueError("empty value")
    except ValueError as exc:
        raise fail(source, where, str(exc)) from None


def _axis(key: str, where: str, value: Any, source: str, base: Path | None,
          scenarios: dict[str, adapter.ScenarioRef]) -> Axis:
    if not isinstance(value, list) or not value:
        raise fail(source, where, f"expected a non-empty list of values, got {value!r}")
    seen: list[Any] = []
    for i, item in enumerate(value):
        if item in seen:
            raise fail(source, f"{where}[{i}]", f"{item!r} is listed twice")
        seen.append(item)
        _check_value(key, f"{where}[{i}]", item, source, base, scenarios)
    return Axis(key, tuple(value), where)


def _seeds(raw: Any, source: str) -> tuple[int, ...]:
    if raw is None:
        return (0,)
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 1 <= raw <= MAX_SEEDS:
            raise fail(source, "seeds", f"a count of seeds must be 1..{MAX_SEEDS}, got {raw}")
        return tuple(range(raw))
    if isinstance(raw, list) and raw:
        for i, seed in enumerate(raw):
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise fail(source, f"seeds[{i}]", f"expected an integer >= 0, got {seed!r}")
        if len(set(raw)) != len(raw):
            raise fail(source, "seeds", "a seed is listed twice")
        return tuple(raw)
    raise fail(source, "seeds", f"expected a count (seeds = 5) or a list of integers, got {raw!r}")


def _text(raw: Mapping[str, Any], key: str, source: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise fail(source, key, f"expected a string, got {type(value).__name__} {value!r}")
    return value


def parse_sweep(text: str, source: str, default_name: str, base: Path | None) -> SweepSpec:
    """Validate sweep TOML ``text`` read from ``source`` (file paths in it are relative to ``base``)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail(source, "", f"invalid TOML: {exc}") from None
    check_numbers(raw, "", source)
    for key in raw:
        if key not in TOP_KEYS:
            raise fail(source, key, "unknown key" + close_match(key, list(TOP_KEYS)))
    name = _text(raw, "name", source, default_name)
    if not NAME_RE.match(name):
        raise fail(source, "name", f"{name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    description = _text(raw, "description", source, "")
    seeds = _seeds(raw.get("seeds"), source)
    scenarios: dict[str, adapter.ScenarioRef] = {}
    seen_keys: dict[str, str] = {}

    def claim(key: str, where: str) -> None:
        if key in seen_keys:
            raise fail(source, where, f"{key} is already given at {seen_keys[key]}")
        seen_keys[key] = where

    fixed = []
    for key, where, value in _leaves(raw.get("fixed", {}), "fixed", "fixed", source):
        claim(key, where)
        _check_value(key, where, value, source, base, scenarios)
        fixed.append(Axis(key, (value,), where))
    axes: list[tuple[Axis, ...]] = []
    for key, where, value in _leaves(raw.get("grid", {}), "grid", "grid", source):
        claim(key, where)
        axes.append((_axis(key, where, value, source, base, scenarios),))
    zips = raw.get("zip", [])
    if not isinstance(zips, list) or not all(isinstance(z, Mapping) for z in zips):
        raise fail(source, "zip", "expected an array of tables: [[zip]]")
    for i, group in enumerate(zips):
        members = []
        for key, where, value in _leaves(group, f"zip[{i}]", f"zip[{i}]", source):
            claim(key, where)
            members.append(_axis(key, where, value, source, base, scenarios))
        if not members:
            raise fail(source, f"zip[{i}]", "an empty [[zip]] group")
        lengths = {len(a.values) for a in members}
        if len(lengths) > 1:
            shape = ", ".join(f"{a.where} has {len(a.values)}" for a in members)
            raise fail(source, f"zip[{i}]", f"lists of one group must have one length: {shape}")
        axes.append(tuple(members))
    if "scenario" not in seen_keys:
        raise fail(source, "scenario", "missing: give a scenario in [fixed] or values in [grid] or [[zip]]")
    costs_file: tuple[adapter.CostChange, ...] = ()
    costs_label = ""
    if "costs_file" in raw:
        rel = _text(raw, "costs_file", source, "")
        path = Path(rel) if base is None or Path(rel).is_absolute() else base / rel
        if not path.is_file():
            raise fail(source, "costs_file", f"no such file: {str(path)!r}")
        costs_file = adapter.cost_changes_from_file(path)  # the simulator's loader: its errors name the file
        costs_label = path.name
    spec = SweepSpec(name, description, source, seeds, tuple(fixed), tuple(axes), scenarios, costs_file,
                     costs_label)
    if spec.runs > MAX_RUNS:
        raise fail(source, "", f"{spec.runs:,} runs is more than {MAX_RUNS:,}; split the study")
    return spec
