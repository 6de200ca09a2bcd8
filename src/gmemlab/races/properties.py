"""The properties the explorer checks after every step.

Some are state invariants (evaluated on every reached state), some are caught by the step that breaks them
(``World.violate``), and ``deadlock`` is also reported by the explorer when unfinished threads are all
blocked or a thread exits holding a lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .world import NOBODY, PREPARED, World, folio_name


@dataclass(frozen=True)
class Property:
    name: str
    text: str


PROPERTIES: tuple[Property, ...] = (
    Property("host_maps_private", "the host never maps a private page"),
    Property(
        "stale_guest_mapping",
        "after a conversion completes, no guest mapping (SPTE) disagrees with the state "
        "(checked whenever no MMU invalidation is in progress)",
    ),
    Property(
        "allocation_escapes_conversion",
        "no folio is allocated in a way that escapes a conversion's check (allocated after the conversion "
        "looked at the index and before it stored the new state)",
    ),
    Property(
        "prepared_inconsistent",
        "prepared state stays consistent: a folio is initialized (zeroed/prepared/populated) once, private "
        "preparation only of private indices, GUEST_PREPARED only with a prepared folio",
    ),
    Property("deadlock", "no deadlock: lock order respected, no thread blocked forever, no lock leaked"),
    Property("refcount_underflow", "no folio refcount below zero (or zero while still in the page cache)"),
    Property(
        "mapping_of_freed_folio",
        "no host PTE or SPTE maps a folio that was truncated from the page cache (use after free)",
    ),
)
PROPERTY_TEXT = {p.name: p.text for p in PROPERTIES}


def check_invariants(w: World, ignore: frozenset[str] = frozenset()) -> tuple[str, str] | None:
    """Return (property, message) for the first state invariant ``w`` breaks (skipping ``ignore``)."""
    for found in broken_invariants(w):
        if found[0] not in ignore:
            return found
    return None


def broken_invariants(w: World) -> Iterator[tuple[str, str]]:
    for i in range(w.npages):
        pte = w.host_pte[i]
        if pte and not w.host_faultable(i):
            what = f"shareability[{i}] = {w.share[i]}" if w.per_index else "the file is not INIT_SHARED"
            yield "host_maps_private", f"host PTE maps {folio_name(i, pte)} while {what}"
        if pte and pte != w.folio[i]:
            yield "mapping_of_freed_folio", f"host PTE maps {folio_name(i, pte)} which is no longer cached"
        spte = w.spte[i]
        if spte is not None:
            gen, kind = spte
            if gen and gen != w.folio[i]:
                yield "mapping_of_freed_folio", f"SPTE maps {folio_name(i, gen)} which is no longer cached"
            if w.mmu_in_progress == 0 and kind != w.expected_spte_kind(i):
                yield (
                    "stale_guest_mapping",
                    f"{kind} SPTE for index {i} while its state is {w.share[i]} and no invalidation is "
                    "in progress",
                )
        if w.share[i] == PREPARED and w.flock[i] == NOBODY and not (w.folio[i] and w.uptodate[i]):
            yield (
                "prepared_inconsistent",
                f"shareability[{i}] = GUEST_PREPARED but no prepared folio is cached at index {i}",
            )
