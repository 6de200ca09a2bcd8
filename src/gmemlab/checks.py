"""Checks for numbers where input enters gmemlab (scenario files, ``--set``, cost files, sweep files, replay
files, the Python API): a number is finite, an integer is an integer and fits its range.

Python floats admit ``nan`` and ``inf`` (TOML writes them ``nan``/``inf``, JSON readers accept ``NaN`` and
``Infinity``) and Python ints are unbounded, so a value that would be refused by any C program reading the
same file must be refused here, before it reaches arithmetic that turns it into a traceback, a silent ``NaN`` in
a result, or a size that wraps. Each check raises ``ValueError(reason)``: the caller adds where the value came
from (``file.toml: runtime_churn.rate_per_s: must be a finite number, got nan``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

U64_MAX = (1 << 64) - 1
S64_MIN = -(1 << 63)
S64_MAX = (1 << 63) - 1
# The byte sizes and offsets of guest memory are loff_t (a file offset) in guest_memfd.
SIZE_MAX = S64_MAX


def _what(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def check_number(value: object, *, integer: bool = False, min: float | None = None,
                 max: float | None = None) -> int | float:
    """``value`` as an int (``integer=True``) or a float, finite and within ``[min, max]``.

    Booleans are not numbers here (TOML and JSON spell them ``true``/``false``); an integer without bounds
    must still fit 64 bits (signed, or unsigned when ``min >= 0``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected {'an integer' if integer else 'a number'}, got {_what(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if integer:
            raise ValueError(f"expected an integer, got {_what(value)}")
    if min is not None and value < min:
        raise ValueError(f"must be at least {min}, got {value!r}")
    if max is not None and value > max:
        raise ValueError(f"must be at most {max}, got {value!r}")
    if isinstance(value, int):
        lo = S64_MIN if min is None or min < 0 else 0
        hi = U64_MAX if lo == 0 else S64_MAX
        if not lo <= value <= hi:
            raise ValueError(f"{value} does not fit in 64 bits")
    return value if integer else float(value)


def check_int(value: object, lo: int, hi: int) -> int:
    """An integer within ``[lo, hi]``."""
    return int(check_number(value, integer=True, min=lo, max=hi))


def nonfinite_path(data: Any, path: str = "") -> tuple[str, str] | None:
    """The first (key path, reason) in a parsed TOML/JSON document that no C reader could hold: a NaN or
    infinite float, or an integer outside 64 bits. ``None`` when there is none.

    Schemas check their own keys; this catches the values in free-form parts (lists of overrides, cost rows,
    replayed operations) before anything computes with them."""
    if isinstance(data, float):
        if not math.isfinite(data):
            return path, f"must be a finite number, got {data!r}"
    elif isinstance(data, int) and not isinstance(data, bool):
        if not S64_MIN <= data <= U64_MAX:
            return path, f"{data} does not fit in 64 bits"
    elif isinstance(data, Mapping):
        for key, value in data.items():
            found = nonfinite_path(value, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            found = nonfinite_path(value, f"{path}[{i}]")
            if found:
                return found
    return None
