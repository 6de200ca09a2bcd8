"""The constants conformance cases share: sizes, fallocate modes, flag bits, profiles, bad arguments.

Flag bits are the uAPI's (spec 1.4, 1.5): bit 0 is MMAP (6.18) or SUPPORT_SHARED (RFC v2), bit 1 is
INIT_SHARED (6.18) or INIT_PRIVATE (RFC v2), bit 2 is HUGETLB (RFC v2).
"""

from __future__ import annotations

from ..uapi import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    GUESTMEM_HUGETLB_FLAG_1GB,
    GUESTMEM_HUGETLB_FLAG_2MB,
    PAGE_SIZE,
)

P = PAGE_SIZE
M2, G1 = 1 << 21, 1 << 30
KEEP = FALLOC_FL_KEEP_SIZE
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

# The merged lineage (gmemlab.uapi.lineage): a case tagged LINUX runs on every merged profile and asks
# ctx.since() where a later release changed the answer; IN_PLACE cases need the in-place conversion series.
LINUX = ("linux-6.18", "linux-7.3", "linux-7.4")
IN_PLACE = ("linux-7.4",)
RFC = ("rfc-v2",)

SUPPORT_SHARED = 1 << 0
INIT_PRIVATE = 1 << 1
HUGETLB = 1 << 2
SIZE_FLAGS = {M2: GUESTMEM_HUGETLB_FLAG_2MB, G1: GUESTMEM_HUGETLB_FLAG_1GB}
SIZES = {"2M": M2, "1G": G1}

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25

# (offset, len) pairs a punch hole refuses with EINVAL (selftest test_invalid_punch_hole).
INVALID_PUNCHES = [(0, 1), (0, P - 1), (0, P + 1), (1, 1), (1, P - 1), (1, P), (1, P + 1), (P, 1), (P, P - 1),
                   (P, P + 1)]
