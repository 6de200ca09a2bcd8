"""Mapping levels of x86 page tables: 4 KiB, 2 MiB, 1 GiB (``PG_LEVEL_4K`` .. ``PG_LEVEL_1G``).

Stage-2 leaves, host userspace mappings, folio sizes and the lpage record all speak in these levels.
"""

from __future__ import annotations

LEVEL_4K, LEVEL_2M, LEVEL_1G = 1, 2, 3
LEVEL_PAGES = {LEVEL_4K: 1, LEVEL_2M: 512, LEVEL_1G: 512 * 512}
LEVEL_NAMES = {LEVEL_4K: "4K", LEVEL_2M: "2M", LEVEL_1G: "1G"}


def level_for_order(order: int) -> int:
    """``kvm_max_level_for_order``: order >= 18 -> 1G, >= 9 -> 2M, else 4K."""
    return LEVEL_1G if order >= 18 else LEVEL_2M if order >= 9 else LEVEL_4K


def order_for_level(level: int) -> int:
    return {LEVEL_4K: 0, LEVEL_2M: 9, LEVEL_1G: 18}[level]
