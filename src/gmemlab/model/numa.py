"""NUMA placement: the inode's shared memory policy and the node each folio lands on (spec 2.4, U6.19).

``mbind()`` on a guest_memfd mapping stores the policy in the inode (``set_policy``), keyed by file index,
so every mapping and every allocation path (host fault, fallocate, ``kvm_gmem_get_pfn``) honours it;
``get_mempolicy(MPOL_F_ADDR)`` reads it back. A folio keeps the node it was allocated on: a later policy
change moves nothing (test_numa_allocation). Placement is recorded as the policy in force at allocation,
per range, so nothing here is sized by guest memory; the node of one index is derived on demand.
"""

from __future__ import annotations

import errno

from ..errors import KvmError
from ..rangemap import RangeMap
from ..uapi import (
    MPOL_BIND,
    MPOL_DEFAULT,
    MPOL_INTERLEAVE,
    MPOL_LOCAL,
    MPOL_MAX,
    MPOL_MODE_FLAGS,
    MPOL_PREFERRED,
    MPOL_PREFERRED_MANY,
    MPOL_WEIGHTED_INTERLEAVE,
)

Policy = tuple[int, int, int]  # (mode | mode flags as returned, nodemask as returned, nodes actually used)
DEFAULT_POLICY: Policy = (MPOL_DEFAULT, 0, 0)
LOCAL_NODE = 0  # the modelled task runs on node 0
MPOL_F_STATIC_NODES = 1 << 15
MPOL_F_RELATIVE_NODES = 1 << 14
MPOL_F_NUMA_BALANCING = 1 << 13


def sanitize_mpol_flags(mode: int) -> None:
    """The checks ``kernel_mbind`` makes before anything else: a known mode and compatible mode flags."""
    flags = mode & MPOL_MODE_FLAGS
    base = mode & ~MPOL_MODE_FLAGS
    if base >= MPOL_MAX or base < 0:
        raise KvmError(errno.EINVAL, "mbind", f"mode {mode} is not a memory policy")
    if flags & MPOL_F_STATIC_NODES and flags & MPOL_F_RELATIVE_NODES:
        raise KvmError(errno.EINVAL, "mbind", "MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES exclude each other")
    if flags & MPOL_F_NUMA_BALANCING and base not in (MPOL_BIND, MPOL_PREFERRED_MANY):
        raise KvmError(errno.EINVAL, "mbind", "MPOL_F_NUMA_BALANCING needs MPOL_BIND or MPOL_PREFERRED_MANY")


def validate(mode: int, nodemask: int, nr_nodes: int) -> Policy:
    """``mbind``'s checks (mm/mempolicy.c: ``sanitize_mpol_flags``, ``mpol_new``, ``mpol_set_nodemask``).

    Offline nodes are masked off, not refused; a mask left empty is EINVAL. ``MPOL_PREFERRED`` with no
    node becomes ``MPOL_LOCAL``; ``MPOL_PREFERRED`` keeps only its first node. Mode flags are returned
    by ``get_mempolicy`` together with the mode.
    """
    sanitize_mpol_flags(mode)
    flags = mode & MPOL_MODE_FLAGS
    base = mode & ~MPOL_MODE_FLAGS
    user_nodes = flags & (MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES)
    if base == MPOL_DEFAULT:
        if nodemask:
            raise KvmError(errno.EINVAL, "mbind", f"MPOL_DEFAULT takes an empty node mask, got {nodemask:#x}")
        return DEFAULT_POLICY
    if base == MPOL_PREFERRED and not nodemask:
        if user_nodes:
            raise KvmError(errno.EINVAL, "mbind", "MPOL_PREFERRED with no node cannot have node-mode flags")
        base = MPOL_LOCAL
    elif base == MPOL_LOCAL and (nodemask or user_nodes):
        raise KvmError(errno.EINVAL, "mbind", f"MPOL_LOCAL takes no nodes, got {nodemask:#x}")
    if base == MPOL_LOCAL:
        return (MPOL_LOCAL | flags, 0, 0)
    online = (1 << nr_nodes) - 1
    if flags & MPOL_F_RELATIVE_NODES:
        # mpol_relative_nodemask(): bit n names the (n mod nr_nodes)-th online node
        effective = 0
        for n in range(nodemask.bit_length()):
            if nodemask >> n & 1:
                effective |= 1 << (n % nr_nodes)
    else:
        effective = nodemask & online
    if not effective:
        raise KvmError(errno.EINVAL, "mbind", f"node mask {nodemask:#x} has no online node (online {online:#x})")
    if base == MPOL_PREFERRED:
        effective &= -effective  # only the first node is kept
    # With node-mode flags the user's mask is kept and reported (MPOL_F_NUMA_BALANCING too, as observed
    # on this 6.18 kernel); otherwise the mask actually in use.
    shown = nodemask if flags else effective
    return (base | flags, shown, effective)


def node_for(policy: Policy, index: int) -> int:
    """The node a folio allocated at file ``index`` under ``policy`` lands on."""
    mode, _, mask = policy
    mode &= ~MPOL_MODE_FLAGS
    nodes = [n for n in range(mask.bit_length()) if mask >> n & 1]
    if mode in (MPOL_INTERLEAVE, MPOL_WEIGHTED_INTERLEAVE) and nodes:
        return nodes[index % len(nodes)]  # shared policies interleave by page offset
    if mode in (MPOL_BIND, MPOL_PREFERRED, MPOL_PREFERRED_MANY) and nodes:
        return LOCAL_NODE if LOCAL_NODE in nodes else nodes[0]
    return LOCAL_NODE


class SharedPolicy:
    """The inode's shared policy (``kvm_gmem_set_policy`` / ``get_policy``) over file indices."""

    def __init__(self, npages: int) -> None:
        self.policy: RangeMap[Policy] = RangeMap(max(npages, 1), DEFAULT_POLICY)

    @property
    def limit(self) -> int:
        return self.policy.limit

    def set(self, start: int, end: int, policy: Policy) -> None:
        end = min(end, self.policy.limit)
        if start < end:
            self.policy.store(start, end, policy)

    def get(self, index: int) -> tuple[int, int]:
        """What ``get_mempolicy`` reports at ``index``: (mode with flags, nodemask)."""
        policy = self.policy.load(index) if index < self.policy.limit else DEFAULT_POLICY
        return policy[0], policy[1]
