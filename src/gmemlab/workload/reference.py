"""The scenario file reference, generated from the schema (``docs/scenario-reference.md``).

Every key a scenario file (or ``--set``) accepts, with its type, unit, default and meaning, read from the
dataclass fields of :mod:`gmemlab.workload.scenario` and their :class:`~gmemlab.workload.schema.Spec`; a test
fails when the file in ``docs/`` differs from :func:`markdown` (regenerate it with
``gmemlab scenarios reference --out docs/scenario-reference.md``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..checks import SIZE_MAX
from .scenario import ARCH_NAMES, ARCHES, Scenario, arch_rule
from .schema import (
    Amount,
    ArrayOf,
    Bool,
    Choice,
    Count,
    Levels,
    LevelSize,
    Nested,
    Number,
    Portion,
    Size,
    SizeDist,
    Spec,
    StrMap,
    TableOf,
    Text,
)
from .units import format_level, format_size


def _size_text(n: int) -> str:
    return format_size(n) if n else "0"


def type_text(spec: Spec) -> str:
    """What a value looks like, with its constraints."""
    if isinstance(spec, Size):
        parts = ["size"]
        if spec.multiple_of > 1:
            parts.append(f"multiple of {format_size(spec.multiple_of)}")
        if spec.min:
            parts.append(f">= {_size_text(spec.min)}")
        if spec.max != SIZE_MAX:
            parts.append(f"<= {_size_text(spec.max)}")
        text = ", ".join(parts)
        return text + ', or "auto"' if spec.auto else text
    if isinstance(spec, Amount):
        multiple = f" (multiple of {format_size(spec.multiple_of)})" if spec.multiple_of > 1 else ""
        return f'size{multiple}, fraction of guest_mem in [0, 1], or "all"'
    if isinstance(spec, Number):
        kind = "integer" if spec.integer else "number"
        lo = "" if spec.min is None else f"{spec.min:g}"
        hi = "" if spec.max is None else f"{spec.max:g}"
        if lo and hi:
            return f"{kind} in [{lo}, {hi}]"
        if lo:
            return f"{kind} >= {lo}"
        return f"{kind} <= {hi}" if hi else kind
    if isinstance(spec, Bool):
        return "true or false"
    if isinstance(spec, Text):
        return "string"
    if isinstance(spec, Choice):
        return "one of " + ", ".join(f"`{c}`" for c in spec.choices)
    if isinstance(spec, Count):
        return 'integer >= 1, or "vcpus"'
    if isinstance(spec, Levels):
        return "list of levels (4K, 2M, 1G), largest first"
    if isinstance(spec, LevelSize):
        return 'level: 4K, 2M or 1G, or "auto"' if spec.auto else "level: 4K, 2M or 1G"
    if isinstance(spec, SizeDist):
        return "table: size = probability (sum 1)"
    if isinstance(spec, StrMap):
        return "table of strings"
    if isinstance(spec, ArrayOf):
        return "array of tables"
    if isinstance(spec, TableOf):
        return "table of named tables"
    if isinstance(spec, Nested):
        return "table"
    return type(spec).__name__  # pragma: no cover - a new Spec type shows its name until described here


def unit_text(name: str, spec: Spec) -> str:
    """The unit a value is in, where it has one."""
    if isinstance(spec, Size | Amount | SizeDist):
        return "bytes (B, KiB, MiB, GiB, TiB)"
    if isinstance(spec, LevelSize | Levels):
        return "page size"
    if isinstance(spec, Number):
        if name.endswith("_per_s"):
            return "per second"
        if name.endswith("_s"):
            return "seconds"
        if "fraction" in name or spec.max == 1.0:
            return "fraction"
        return "count" if spec.integer else ""
    if isinstance(spec, Count):
        return "count"
    return ""


def default_text(value: Any, spec: Spec) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    if isinstance(value, Portion):
        j = value.as_json()
        return f'"{j}"' if isinstance(j, str) else (f"{j:g}" if isinstance(j, float) else _size_text(j))
    if value is None:
        return '"auto"' if isinstance(spec, Size | LevelSize) and spec.auto else "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(spec, LevelSize):
        return format_level(value)
    if isinstance(spec, Levels):
        return "[" + ", ".join(f'"{format_level(v)}"' for v in value) + "]"
    if isinstance(spec, Size):
        return _size_text(value)
    if isinstance(spec, SizeDist):
        return "{" + ", ".join(f'"{format_size(s)}" = {p:g}' for s, p in value) + "}"
    if isinstance(spec, ArrayOf | TableOf | StrMap) and not value:
        return "(none)"
    if isinstance(value, str):
        return f'"{value}"'
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class Key:
    key: str
    type: str
    unit: str
    default: str
    meaning: str
    arches: str = "all"  # the guest architectures where the key acts; elsewhere only its default is accepted


def arches_text(arches: tuple[str, ...]) -> str:
    return "all" if set(arches) == set(ARCHES) else ", ".join(ARCH_NAMES[a] for a in arches)


def keys(cls: type = Scenario, prefix: str = "", inherited: tuple[tuple[str, ...], str] | None = None) -> list[Key]:
    """Every settable key under ``cls``, in schema order."""
    out: list[Key] = []
    for fld in dataclasses.fields(cls):
        if "spec" not in fld.metadata:
            continue
        spec: Spec = fld.metadata["spec"]
        key = prefix + fld.name
        doc = fld.metadata.get("doc", "") or ""
        rule = arch_rule(fld, inherited)
        where = arches_text(rule[0] if rule else ARCHES)
        if isinstance(spec, Nested):
            out.extend(keys(spec.cls, key + ".", rule))
            continue
        if fld.default is not dataclasses.MISSING:
            default = fld.default
        elif fld.default_factory is not dataclasses.MISSING:
            default = fld.default_factory()
        else:
            default = dataclasses.MISSING
        if not doc and isinstance(spec, ArrayOf | TableOf):
            doc = (spec.cls.__doc__ or "").split("\n")[0]
        out.append(Key(key, type_text(spec), unit_text(fld.name, spec), default_text(default, spec), doc, where))
        if isinstance(spec, ArrayOf):
            out.extend(keys(spec.cls, key + "[N].", rule))
        elif isinstance(spec, TableOf):
            out.extend(keys(spec.cls, key + ".NAME.", rule))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """``docs/scenario-reference.md``."""
    lines = [
        "# Scenario file reference",
        "",
        "Generated from the schema (`gmemlab scenarios reference`; `src/gmemlab/workload/reference.py`); a test",
        "fails when this file is out of date. Every key can be set in a scenario file (TOML) or on the command",
        "line with `--set key=value` (dotted keys; a value is read as TOML when it parses, else as a string).",
        "Start from a built-in scenario: `gmemlab scenarios export NAME --out my.toml`.",
        "",
        "Sizes are written with binary units (`4KiB`, `2MiB`, `64GiB`, `1TiB`; `4K`/`2M`/`1G` too) or as a",
        "number of bytes, at most 2^63 - 1 (a file offset); decimal units (`GB`) are refused. Numbers must be",
        "finite (no `nan`, `inf`); integers fit 64 bits. `NAME` stands for the name of an entry of a table of",
        "tables (`[shared_regions.swiotlb]`), `N` for the index of an array entry (`[[populate.ranges]]`).",
        "",
        "`arches` lists the guest architectures (`arch`) where a key acts; on the others the key has nothing to",
        "act on (the hardware or guest code that has the choice exists only there), so a scenario of another arch",
        "may only leave it at its default: any other value is refused with the reason.",
        "",
        "| key | type | unit | default | arches | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for k in keys():
        lines.append(f"| `{k.key}` | {_cell(k.type)} | {_cell(k.unit)} | {_cell(k.default)} | {_cell(k.arches)} "
                     f"| {_cell(k.meaning)} |")
    return "\n".join(lines) + "\n"
