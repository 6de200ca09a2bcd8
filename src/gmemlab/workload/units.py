"""Byte sizes as scenario files write them ("64GiB", "4MiB", "2M", 4096) and as reports print them.

Binary units only, spelled as written (workloads.md §5 writes ``64GiB``, ``4MiB``; §2 writes levels as
``4K``/``2M``/``1G``); ``Gib`` (gibibits) is refused with a did-you-mean.
Decimal units (``GB``) are refused with a hint, because ``64GB`` in a guest-memory context is ambiguous.
"""

from __future__ import annotations

import re

from ..level import Level

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_UNITS = {
    "": 1, "B": 1,
    "K": KiB, "KiB": KiB,
    "M": MiB, "MiB": MiB,
    "G": GiB, "GiB": GiB,
    "T": TiB, "TiB": TiB,
}
_BY_LOWER = {unit.lower(): unit for unit in _UNITS}
_DECIMAL = {"kb": "KiB", "mb": "MiB", "gb": "GiB", "tb": "TiB"}
_SIZE_RE = re.compile(r"^\s*(0[xX][0-9a-fA-F_]+|[0-9][0-9_]*)\s*([A-Za-z]*)\s*$")


def parse_size(value: object) -> int:
    """An int, or a string like ``"64GiB"``, ``"4 MiB"``, ``"2M"``, ``"0xffc00000"``, as bytes.

    Raises ``ValueError`` with a reason fit for a user (negative, bad unit, not a size).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 4KiB or 64GiB, got boolean {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 4KiB or 64GiB, got {type(value).__name__} {value!r}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"size must not be negative, got {value!r}")
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {value!r} (write e.g. 4KiB, 2MiB, 64GiB or a number of bytes)")
    number, unit = match.groups()
    if unit.lower() in _DECIMAL:
        raise ValueError(f"unit {unit!r} in {value!r} is decimal; did you mean {_DECIMAL[unit.lower()]}?")
    if unit not in _UNITS:
        known = _BY_LOWER.get(unit.lower())
        hint = f"did you mean {known!r}?" if known else "use B, KiB, MiB, GiB or TiB"
        raise ValueError(f"unknown unit {unit!r} in {value!r} ({hint})")
    if number.lower().startswith("0x") and unit:
        raise ValueError(f"a hexadecimal size takes no unit: {value!r}")
    return int(number.replace("_", ""), 0) * _UNITS[unit]


def format_size(nbytes: int) -> str:
    """The largest binary unit that divides ``nbytes`` exactly: 4096 -> ``4KiB``, 3 GiB -> ``3GiB``."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if nbytes and nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    return f"{nbytes}B"


def format_bytes(n: float) -> str:
    """An amount of memory as results print it (one way everywhere: tables, summaries, progress):
    ``0``, ``512 B``, ``4 KiB``, ``1.50 GiB``, ``64 GiB`` (two decimals unless exact). Sizes a scenario file
    writes are printed as it writes them (:func:`format_size`: ``64GiB``)."""
    if not n:
        return "0"
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n:.0f} B"


def format_level(page_size: int) -> str:
    """The size of a mapping level as the kernel's comments write it (``4K``, ``2M``, ``1G``:
    :attr:`gmemlab.level.Level.label`); any other size as ``16K``."""
    try:
        return Level.of_size(page_size).label
    except ValueError:
        return format_size(page_size).replace("iB", "")
