"""The model's profiles: one :class:`Behaviour` per kernel lineage, each module stating only its differences.

Merged Linux is a lineage, ``linux-6.18`` -> ``linux-7.3`` -> ``linux-7.4`` (in-place conversion, v13) ->
``linux-7.4-v8`` (the recorded v8 kernel); ``rfc-v2`` (the seed's RFC, with HugeTLB) is its own root. Each
profile class subclasses its parent's and lists what it changes in ``CHANGES`` (``gmemlab profiles``), so
:mod:`gmemlab.model.profiles.linux_7_4` is the one file that shows what 7.4 changes.
"""

from __future__ import annotations

from ...uapi import LINUX_6_18, LINUX_7_3, LINUX_7_4, LINUX_7_4_V8, PROFILES, RFC_V2
from .base import ArchHooks, Behaviour, Change, PopulateRules
from .linux_6_18 import Linux618
from .linux_7_3 import Linux73
from .linux_7_4 import GMEM_IN_PLACE_CONVERSION_DEFAULT, IN_PLACE_DEFAULT_ENV, Linux74, in_place_default
from .linux_7_4_v8 import Linux74V8
from .rfc_v2 import RfcV2

BEHAVIOURS: dict[str, Behaviour] = {
    LINUX_6_18.name: Linux618(LINUX_6_18),
    LINUX_7_3.name: Linux73(LINUX_7_3),
    LINUX_7_4.name: Linux74(LINUX_7_4),
    LINUX_7_4_V8.name: Linux74V8(LINUX_7_4_V8),
    RFC_V2.name: RfcV2(RFC_V2),
}


def behaviour(name: str) -> Behaviour:
    try:
        return BEHAVIOURS[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown profile {name!r}; known profiles: {known}") from None


__all__ = [
    "BEHAVIOURS",
    "GMEM_IN_PLACE_CONVERSION_DEFAULT",
    "IN_PLACE_DEFAULT_ENV",
    "ArchHooks",
    "Behaviour",
    "Change",
    "Linux73",
    "Linux74",
    "Linux74V8",
    "Linux618",
    "PopulateRules",
    "RfcV2",
    "behaviour",
    "in_place_default",
]
