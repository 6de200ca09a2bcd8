"""Typed tables: TOML tables validated into frozen dataclasses (workloads.md §5 scenario schema, §4 costs).

A dataclass field declares how its value is read with ``metadata={"spec": <Spec>}`` (see :func:`option`).
:func:`build` walks the fields, rejects unknown keys with a did-you-mean, and raises
:class:`gmemlab.errors.UsageError` reading ``<source>: <key.path>: <reason>``. :func:`spec_at` finds the
spec behind a dotted key so ``--set key=value`` overrides are checked by the same code.
"""

from __future__ import annotations

import dataclasses
import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ..checks import SIZE_MAX, check_number
from ..errors import UsageError
from ..level import LEVELS
from .units import format_size, parse_size

AUTO = "auto"


def fail(source: str, path: str, reason: str) -> UsageError:
    """The one error text format: ``file.toml: accept.chunk: must be a multiple of 4KiB``."""
    where = f"{source}: {path}" if path else source
    return UsageError(f"{where}: {reason}")


def did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(sorted(known))})" if known else ""


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Spec(ABC):
    """How one value is read. ``parse`` raises ``ValueError(reason)`` or returns the typed value;
    ``path`` and ``source`` are for specs that build sub-tables (their errors name the inner key)."""

    @abstractmethod
    def parse(self, value: Any, path: str, source: str) -> Any: ...


@dataclass(frozen=True)
class Size(Spec):
    """A byte size (:func:`parse_size`) within ``[min, max]``; ``auto=True`` also accepts ``"auto"``
    (returned as None). Sizes and offsets of guest memory are file offsets (``loff_t``): at most 2^63 - 1."""

    min: int = 0
    multiple_of: int = 1
    auto: bool = False
    max: int = SIZE_MAX

    def parse(self, value: Any, path: str, source: str) -> int | None:
        if self.auto and value == AUTO:
            return None
        size = parse_size(value)
        if size < self.min:
            raise ValueError(f"must be at least {self.min} bytes, got {value!r}")
        if size > self.max:
            limit = "2^63 - 1 bytes (a file offset)" if self.max == SIZE_MAX else format_size(self.max)
            raise ValueError(f"must be at most {limit}, got {value!r}")
        if size % self.multiple_of:
            raise ValueError(f"must be a multiple of {self.multiple_of} bytes, got {value!r}")
        return size


class Portion:
    """A part of guest memory as a scenario writes it: a size, a fraction of guest memory, or all of it.

    Kept unresolved so ``--set guest_mem=...`` scales it (simulator issue item 8): ``resolve(guest_mem)``.
    """

    __slots__ = ("fraction", "size")

    def __init__(self, size: int | None = None, fraction: float | None = None) -> None:
        self.size = size
        self.fraction = fraction

    def resolve(self, guest_mem: int, page: int = 4096) -> int:
        """Bytes, at most ``guest_mem``, rounded down to ``page``."""
        if self.size is not None:
            return min(self.size, guest_mem)
        return int((self.fraction if self.fraction is not None else 1.0) * guest_mem) // page * page

    def as_json(self) -> int | float | str:
        if self.size is not None:
            return self.size
        return "all" if self.fraction is None else self.fraction

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Portion) and (self.size, self.fraction) == (other.size, other.fraction)

    def __hash__(self) -> int:
        return hash((self.size, self.fraction))

    def __repr__(self) -> str:
        return f"Portion({self.as_json()!r})"


ALL = Portion()


@dataclass(frozen=True)
class Amount(Spec):
    """A :class:`Portion`: ``"all"``, a fraction of guest memory (a float such as ``0.25``) or a size
    (``"4GiB"``, a multiple of ``multiple_of``)."""

    multiple_of: int = 1

    def parse(self, value: Any, path: str, source: str) -> Portion:
        if value == "all":
            return ALL
        if isinstance(value, float):
            if not 0.0 <= value <= 1.0:  # NaN compares false: refused too
                raise ValueError(f"a fraction of guest memory must be within [0, 1], got {value!r}")
            return Portion(fraction=value)
        if isinstance(value, str) and value.strip().lower() in ("auto", "whole", "everything"):
            raise ValueError(f"{value!r}: write \"all\" for all of guest memory")
        try:
            size = Size(multiple_of=self.multiple_of).parse(value, path, source)
        except ValueError as exc:
            raise ValueError(f"{exc}; or a fraction of guest memory such as 0.25, or \"all\"") from None
        assert size is not None
        return Portion(size=size)


@dataclass(frozen=True)
class Number(Spec):
    """An int (``integer=True``) or a float, within [min, max]; never NaN or infinite, an integer fits 64 bits
    (:func:`gmemlab.checks.check_number`)."""

    integer: bool = False
    min: float | None = None
    max: float | None = None

    def parse(self, value: Any, path: str, source: str) -> int | float:
        return check_number(value, integer=self.integer, min=self.min, max=self.max)


@dataclass(frozen=True)
class Bool(Spec):
    def parse(self, value: Any, path: str, source: str) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value


@dataclass(frozen=True)
class Text(Spec):
    def parse(self, value: Any, path: str, source: str) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
        return value


@dataclass(frozen=True)
class Choice(Spec):
    choices: tuple[str, ...]

    def parse(self, value: Any, path: str, source: str) -> str:
        if value not in self.choices:
            close = difflib.get_close_matches(str(value), self.choices, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{value!r} is not one of {', '.join(self.choices)}{hint}")
        return str(value)


@dataclass(frozen=True)
class Count(Spec):
    """A count that may be written as ``"vcpus"`` (resolved by the scenario)."""

    def parse(self, value: Any, path: str, source: str) -> int | str:
        if value == "vcpus":
            return "vcpus"
        return int(Number(integer=True, min=1).parse(value, path, source))


@dataclass(frozen=True)
class Levels(Spec):
    """Mapping levels, largest first: ``["1G", "2M", "4K"]`` -> (1 GiB, 2 MiB, 4 KiB)."""

    def parse(self, value: Any, path: str, source: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected a non-empty list of levels such as [\"2M\", \"4K\"], got {value!r}")
        levels = tuple(cast(int, LevelSize().parse(item, path, source)) for item in value)
        if list(levels) != sorted(set(levels), reverse=True):
            raise ValueError(f"levels must be distinct and largest first, got {value!r}")
        return levels


@dataclass(frozen=True)
class LevelSize(Spec):
    """The size of a mapping level (:class:`gmemlab.level.Level`): ``"2M"`` -> 2 MiB; ``auto=True`` also
    accepts ``"auto"`` (returned as None: the scenario resolves it)."""

    auto: bool = False

    def parse(self, value: Any, path: str, source: str) -> int | None:
        if self.auto and value == AUTO:
            return None
        size = None
        try:
            size = parse_size(value)
        except ValueError:
            if not self.auto:
                raise  # the size's own message (a unit, a sign)
        level = next((lv for lv in LEVELS if lv.bytes == size), None)
        if level is None:  # with "auto" allowed, any word but a size names the choices
            either = ', or "auto"' if self.auto else ""
            raise ValueError(f"{value!r} is not a mapping level (4K, 2M or 1G{either})")
        return level.bytes


@dataclass(frozen=True)
class SizeDist(Spec):
    """A discrete size distribution ``{"4KiB" = 0.7, "16KiB" = 0.3}`` whose weights sum to 1."""

    def parse(self, value: Any, path: str, source: str) -> tuple[tuple[int, float], ...]:
        if not isinstance(value, dict) or not value:
            raise ValueError(f"expected a table of size = probability, got {value!r}")
        pairs: list[tuple[int, float]] = []
        for key, weight in value.items():
            size = Size(min=1 << 12, multiple_of=1 << 12).parse(key, path, source)
            prob = Number(min=0.0, max=1.0).parse(weight, path, source)
            pairs.append((cast(int, size), prob))
        total = sum(p for _, p in pairs)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"probabilities must sum to 1, they sum to {total:g}")
        return tuple(pairs)


@dataclass(frozen=True)
class StrMap(Spec):
    def parse(self, value: Any, path: str, source: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError(f"expected a table of strings, got {value!r}")
        return tuple(value.items())


@dataclass(frozen=True)
class Nested(Spec):
    cls: type

    def parse(self, value: Any, path: str, source: str) -> Any:
        return build(self.cls, value, path, source)


@dataclass(frozen=True)
class ArrayOf(Spec):
    """An array of tables, each built into ``cls``; paths read ``populate.ranges[2].size``."""

    cls: type

    def parse(self, value: Any, path: str, source: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected an array of tables, got {type(value).__name__}")
        return tuple(build(self.cls, item, f"{path}[{i}]", source) for i, item in enumerate(value))


@dataclass(frozen=True)
class TableOf(Spec):
    """A table of named tables ``[shared_regions.swiotlb]``, each built into ``cls`` with ``name`` set."""

    cls: type

    def parse(self, value: Any, path: str, source: str) -> tuple[Any, ...]:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table of tables, got {type(value).__name__}")
        return tuple(build(self.cls, item, join(path, name), source, name=name) for name, item in value.items())


def _arch_meta(arches: tuple[str, ...] | None, why: str) -> dict[str, Any]:
    if arches is None:
        return {}
    if not why:
        raise TypeError("a key limited to some arches needs the reason (why=...)")
    return {"arches": arches, "why": why}


def option(spec: Spec, default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
           doc: str = "", arches: tuple[str, ...] | None = None, why: str = "") -> Any:
    """A dataclass field read with ``spec``; ``doc`` is shown by ``gmemlab scenarios describe``.

    ``arches``: the guest architectures where the key acts (default: every one); elsewhere a scenario may
    only leave it at its default, and ``why`` is the one-line reason the refusal gives (the kernel or
    guest code that has the choice on those arches and nowhere else)."""
    meta = {"spec": spec, "doc": doc, **_arch_meta(arches, why)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def nested(cls: type, doc: str = "", *, arches: tuple[str, ...] | None = None, why: str = "") -> dict[str, Any]:
    """Field metadata for a sub-table: ``field(default_factory=Backing, metadata=nested(Backing))``;
    ``arches``/``why`` as for :func:`option`, inherited by every key of the table that names none itself."""
    return {"spec": Nested(cls), "doc": doc, **_arch_meta(arches, why)}


def _spec_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if "spec" in f.metadata}


def build(cls: type, table: Any, path: str, where: str, **extra: Any) -> Any:
    """Validate ``table`` against ``cls``'s fields and construct it; missing keys take defaults."""
    if not isinstance(table, Mapping):
        raise fail(where, path, f"expected a table, got {type(table).__name__} {table!r}")
    known = _spec_fields(cls)
    for key in table:
        if key not in known:
            raise fail(where, join(path, key), "unknown key" + did_you_mean(key, list(known)))
    kwargs = dict(extra)
    for name, fld in known.items():
        if name not in table:
            if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                raise fail(where, join(path, name), "missing required key")
            continue
        key_path = join(path, name)
        try:
            kwargs[name] = fld.metadata["spec"].parse(table[name], key_path, where)
        except ValueError as exc:
            raise fail(where, key_path, str(exc)) from None
    return cls(**kwargs)


def spec_at(cls: type, dotted: str, source: str) -> Spec:
    """The spec of the leaf behind ``dotted`` (``accept.chunk``, ``shared_regions.swiotlb.size``)."""
    parts = dotted.split(".")
    path = ""
    spec: Spec = Nested(cls)
    for i, part in enumerate(parts):
        if isinstance(spec, TableOf):  # the part names an entry; any name is accepted here
            spec, path = Nested(spec.cls), join(path, part)
            continue
        if not isinstance(spec, Nested):
            raise fail(source, path, f"is a single value; {'.'.join(parts[i:])!r} cannot be set inside it")
        known = _spec_fields(spec.cls)
        path = join(path, part)
        if part not in known:
            raise fail(source, path, "unknown key" + did_you_mean(part, list(known)))
        spec = known[part].metadata["spec"]
        if isinstance(spec, ArrayOf) and i < len(parts) - 1:
            raise fail(source, path, "is an array of tables; set it whole or edit a copy of the file")
    return spec
