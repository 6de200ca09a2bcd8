"""Mapping levels of x86 page tables: 4 KiB, 2 MiB, 1 GiB (``enum pg_level``, arch/x86/include/asm/pgtable_types.h).

One type for the concept everywhere: stage-2 leaves, host userspace mappings, folio sizes, the lpage
record and the metric keys all speak :class:`Level`. A level knows its page count, order, size in bytes
and label, so nothing needs to spell ``512``, ``>> 9``, ``1 << 21`` or ``"2M"``.
"""

from __future__ import annotations

from typing import ClassVar

from .uapi import PAGE_SHIFT


class Level(int):
    """``PG_LEVEL_4K`` = 1, ``PG_LEVEL_2M`` = 2, ``PG_LEVEL_1G`` = 3 (the kernel's numbers, so levels order).

    There are exactly three instances, :attr:`PG_4K`, :attr:`PG_2M` and :attr:`PG_1G`; ``Level(2)`` is
    :attr:`PG_2M`. A plain ``int`` subclass rather than an ``Enum``: the fault paths read levels millions
    of times and an attribute of an int costs what a local does (an Enum member's properties and class
    attributes cost several times more on Python 3.11).
    """

    order: int  # folio order of a mapping at this level (``KVM_HPAGE_GFN_SHIFT``): 0, 9, 18
    pages: int  # 4 KiB pages per mapping: 1, 512, 262,144
    bytes: int  # bytes per mapping: 4 KiB, 2 MiB, 1 GiB
    label: str  # "4K", "2M", "1G", as the kernel's comments and the metrics' level keys write it
    key: str  # the label in lower case, the suffix of counter names (``split_2m_4k``, ``s2_map_1g``)

    PG_4K: ClassVar[Level]
    PG_2M: ClassVar[Level]
    PG_1G: ClassVar[Level]

    def __new__(cls, value: int) -> Level:
        try:
            return _BY_VALUE[value]
        except KeyError:
            raise ValueError(f"{value!r} is not a mapping level (1 = 4K, 2 = 2M, 3 = 1G)") from None

    @classmethod
    def _define(cls, value: int, order: int, label: str) -> Level:
        level = int.__new__(cls, value)
        level.order = order
        level.pages = 1 << order
        level.bytes = 1 << (order + PAGE_SHIFT)
        level.label = label
        level.key = label.lower()
        _BY_VALUE[value] = level
        return level

    def __repr__(self) -> str:
        return f"Level.PG_{self.label}"

    def __reduce__(self) -> tuple[type[Level], tuple[int]]:
        return Level, (int(self),)

    def smaller(self) -> Level:
        """The next level down (``PG_2M.smaller()`` is ``PG_4K``)."""
        return _BY_VALUE[int(self) - 1]

    def align_down(self, index: int) -> int:
        """First page index of the mapping at this level holding ``index``."""
        return index - index % self.pages

    def align_up(self, index: int) -> int:
        """``index`` rounded up to a multiple of this level's pages."""
        return -(-index // self.pages) * self.pages

    def number(self, index: int) -> int:
        """Which mapping of this level holds page ``index`` (``index >> order``)."""
        return index >> self.order

    def first_page(self, number: int) -> int:
        """First page index of mapping ``number`` of this level (``number << order``)."""
        return number << self.order

    @classmethod
    def for_order(cls, order: int) -> Level:
        """``kvm_max_level_for_order``: order >= 18 -> 1G, >= 9 -> 2M, else 4K."""
        return cls.PG_1G if order >= 18 else cls.PG_2M if order >= 9 else cls.PG_4K

    @classmethod
    def of_size(cls, size: int) -> Level:
        """The level whose mappings are ``size`` bytes; ValueError naming the sizes otherwise."""
        for level in LEVELS:
            if level.bytes == size:
                return level
        raise ValueError(f"{size:#x} bytes is no mapping level (4 KiB, 2 MiB or 1 GiB)")


_BY_VALUE: dict[int, Level] = {}
# Each level maps 512 of the one below: 9 more bits of the address per level.
Level.PG_4K = Level._define(1, 0, "4K")
Level.PG_2M = Level._define(2, 9, "2M")
Level.PG_1G = Level._define(3, 18, "1G")

LEVELS = (Level.PG_4K, Level.PG_2M, Level.PG_1G)  # smallest first
HUGE_LEVELS = (Level.PG_1G, Level.PG_2M)  # largest first, the order a fault tries them in
