"""Helpers for the simulator tests (workloads.md §1, §5, §6)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from gmemlab.arch import generate
from gmemlab.workload.events import Event
from gmemlab.workload.scenario import Scenario, load_scenario


def events(name: str, sets: Sequence[str] = (), seed: int = 0) -> list[Event]:
    return list(generate(load_scenario(name, sets), seed))


def by_type(stream: Sequence[Event]) -> Counter[str]:
    return Counter(type(e).__name__ for e in stream)


@pytest.fixture
def scenario_file(tmp_path):
    """Write TOML text to a file and return its path."""

    def write(text: str, name: str = "mine.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


__all__ = ["Scenario", "by_type", "events"]
