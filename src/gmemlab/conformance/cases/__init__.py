"""The conformance cases, one module per lineage, listed here explicitly (no import side effects).

Order matters only for display: merged Linux first, then RFC v2, then its HugeTLB runs. A new cases
module defines ``CASES = CaseList()`` and is added to :data:`MODULES`.
"""

from __future__ import annotations

from ..case import Case
from . import execute, fuzzfound, hugetlb, inplace, linux, memslot_change, prefault, private, rfc

# memslot_change last: on kernels before 6.18.3 its case leaves a freed memslot bound (a use-after-free)
MODULES = (linux, private, inplace, prefault, execute, fuzzfound, rfc, hugetlb, memslot_change)
REGISTRY: tuple[Case, ...] = tuple(c for module in MODULES for c in module.CASES)


def cases_for(profile: str, pattern: str | None = None) -> list[Case]:
    """The cases that apply to ``profile`` (optionally only names containing ``pattern``), in order."""
    selected = [c for c in REGISTRY if profile in c.profiles]
    if pattern:
        selected = [c for c in selected if pattern in c.name]
    return selected
