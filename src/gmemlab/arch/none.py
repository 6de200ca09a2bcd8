"""Non-CoCo guest on guest_memfd (workloads.md §1.1, §5.1): no private memory, no conversions.

Everything happens in the generic lifecycle: host writes of the payload, shared guest first touches and
scattered host DMA. :class:`gmemlab.arch.base.GuestArch` already has the behaviour; this module names it.
"""

from __future__ import annotations

from .base import GuestArch


class NoneGuest(GuestArch):
    name = "none"
