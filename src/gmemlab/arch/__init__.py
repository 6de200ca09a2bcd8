"""Architecture event generators: deterministic, lazy event streams for a scenario (workloads.md §1).

``generate(scenario, seed)`` yields the guest's lifecycle as events (:mod:`gmemlab.workload.events`). The
same (scenario, seed) always gives the same stream; randomness (placement of scattered shared pages,
runtime buffer sizes and addresses) comes only from ``random.Random(seed)``.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..workload.events import Event
from ..workload.scenario import Scenario
from .base import GuestArch
from .lifecycle import Lifecycle
from .none import NoneGuest
from .pkvm import PkvmGuest
from .snp import SnpGuest
from .tdx import TdxGuest

GUESTS: dict[str, type[GuestArch]] = {
    "none": NoneGuest,
    "snp": SnpGuest,
    "tdx": TdxGuest,
    "pkvm": PkvmGuest,
}


def generate(sc: Scenario, seed: int = 0) -> Iterator[Event]:
    """The scenario's event stream under ``seed``."""
    return Lifecycle(sc, GUESTS[sc.arch](sc), seed).events()


__all__ = ["GUESTS", "GuestArch", "generate"]
