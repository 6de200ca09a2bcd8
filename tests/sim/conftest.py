"""Helpers for the simulator tests (workloads.md §1, §5, §6)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from gmemlab.arch import generate
from gmemlab.workload import events as ev
from gmemlab.workload.events import Event
from gmemlab.workload.scenario import Scenario, load_scenario


def events(name: str, sets: Sequence[str] = (), seed: int = 0) -> list[Event]:
    return list(ev.expand(generate(load_scenario(name, sets), seed)))


def directed(stream: Sequence[Event], cls: type, to_shared: bool) -> list[Event]:
    """The ``cls`` events (PSC VMGEXITs, exits, MapGPAs) of one direction, which the VMM's next conversion
    (:class:`GmemConvert`, or :class:`SetAttr` without in-place conversion) tells."""
    out: list[Event] = []
    pending: list[Event] = []
    for e in stream:
        if isinstance(e, ev.Psc | ev.HcMapGpa | ev.MapGpa):
            pending.append(e)
        elif isinstance(e, ev.GmemConvert | ev.SetAttr):
            shared = e.to_shared if isinstance(e, ev.GmemConvert) else not e.private
            if shared == to_shared:
                out += [p for p in pending if isinstance(p, cls)]
            pending = []
    return out


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


__all__ = ["Scenario", "by_type", "directed", "events"]
