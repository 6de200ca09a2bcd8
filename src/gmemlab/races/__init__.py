"""Race checker for the guest_memfd fault and conversion paths (spec §2.13, §2.14, §5.9).

Kernel paths (guest fault, host fault, conversion, punch hole, populate, allocate) are step generators over
a shared :class:`World`; :class:`Explorer` runs them under a deterministic scheduler, exhaustively (BFS with
state caching, optional preemption bound) or with seeded random schedules, and reports the first violated
property with a minimal interleaving. Self-contained: it does not use :mod:`gmemlab.model`.
"""

from .explorer import Explorer, Result, TraceStep, Violation, explore
from .properties import PROPERTIES, check_invariants
from .protocols import BUILTIN, Config, PathDef, Protocol, Setup, ThreadSpec, get_protocol, parse_threads, register

__all__ = [
    "BUILTIN",
    "PROPERTIES",
    "Config",
    "Explorer",
    "PathDef",
    "Protocol",
    "Result",
    "Setup",
    "ThreadSpec",
    "TraceStep",
    "Violation",
    "check_invariants",
    "explore",
    "get_protocol",
    "parse_threads",
    "register",
]
