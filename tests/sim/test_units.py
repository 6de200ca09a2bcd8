"""Sizes as scenario files write them (gmemlab.workload.units)."""

from __future__ import annotations

import pytest

from gmemlab.workload.units import GiB, KiB, MiB, TiB, format_level, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64GiB", 64 * GiB), ("4MiB", 4 * MiB), ("4KiB", 4 * KiB), ("1TiB", TiB), ("2M", 2 * MiB),
     ("4 KiB", 4096), (4096, 4096), ("0xffc00000", 0xFFC00000), ("1_024", 1024), ("16", 16)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [("64GB", "decimal; did you mean GiB"), ("4XiB", "unknown unit"), ("-4KiB", "negative"), (-1, "negative"),
     ("lots", "not a size"), (True, "boolean"), (1.5, "float"), ("0x10KiB", "hexadecimal")],
)
def test_parse_size_rejects(value, reason):
    with pytest.raises(ValueError, match=reason):
        parse_size(value)


def test_format():
    assert format_size(64 * GiB) == "64GiB"
    assert format_size(768 * KiB) == "768KiB"
    assert format_size(3) == "3B"
    assert format_level(2 * MiB) == "2M"
