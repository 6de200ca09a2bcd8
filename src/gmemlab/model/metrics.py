"""The model's one metrics sink: flat counters named as the cost model names them (workloads.md 4).

Every component that restructures folios, maps memory, converts it or changes KVM state adds to the one
:class:`Metrics` owned by the :class:`~gmemlab.model.kvm_main.ModelBackend`, so counts survive closed
files and destroyed VMs. Where a row of the cost table prices exactly what the model counts, the key is
that row's counter:

* zeroing whole huge folios on their first guest fault: ``zero_2m``, ``zero_1g`` (rows 4, 5; their bytes
  are in ``bytes_zeroed`` too);
* folio restructuring: ``split_1g_4k``, ``split_1g_2m``, ``split_2m_4k``, ``merge_4k_1g``, ``merge_2m_1g``,
  ``merge_4k_2m`` (rows 6-9; the model knows whether a 1G split went to 2M or to 4K);
* vendor work: ``rmpupdate_4k``, ``rmpupdate_2m``, ``psmash`` (SNP), ``tdx_demote`` (TDX: 2M private leaves
  split; ``tdx_guest_inhibit``, the 2M ranges a 4K leaf inhibited, is reported only);
* stage-2: ``s2_zap_leaf`` (leaves zapped), ``tlb_flush_remote`` (one per zap that removed anything);
* conversions: ``conversion_eagain``.

The rest have no row of their own (the simulator prices them per event, or they are reported only):
``guest_faults``, ``stage2_faults_<level>``, ``stage2_bytes_<level>``, ``host_faults_<level>``,
``host_map_bytes_<level>`` (``<level>`` is :attr:`Level.key <gmemlab.level.Level.key>`), ``conversions_ok``,
``split_eagain``, ``punch_eagain``, ``zaps``, ``bytes_zeroed``, ``arch_prepares``,
``shareability_write_locks``, ``pages_freed_at_release``; for in-place conversion (linux-7.md 1.2-1.3)
``conversion_noop``, ``conversion_enomem``, ``gmem_invalidate_shared``/``_private``/``_all`` (invalidations by
filter), ``lru_drains``, and the arch hooks ``make_private``, ``make_shared``, ``reclaim`` (7.4) and
``arch_invalidate`` (7.0-7.3 ``.free_folio``). The vmemmap gauge is separate (a level, not a
count). A counter nothing reads is not kept.

:meth:`Metrics.as_dict` gives the nested shape of ``ModelBackend.metrics()``.
"""

from __future__ import annotations

from collections import Counter

from ..level import HUGE_LEVELS, LEVELS, Level

ARCH_COUNTERS = ("psmash", "rmpupdate_2m", "rmpupdate_4k", "shareability_write_locks", "tdx_demote",
                 "make_private", "make_shared", "reclaim", "arch_invalidate", "tdx_guest_inhibit")


def per_level(name: str, level: Level) -> str:
    """The key of a per-level counter: ``per_level("stage2_faults", Level.PG_2M)`` is ``stage2_faults_2m``."""
    key = _PER_LEVEL.get((name, level))
    if key is None:
        key = _PER_LEVEL[name, level] = f"{name}_{level.key}"
    return key


_PER_LEVEL: dict[tuple[str, Level], str] = {}  # the fault paths ask for the same few keys all the time


def split_key(big: Level, small: Level) -> str:
    """``split_1g_4k``: a folio of level ``big`` split into folios of level ``small``."""
    return f"split_{big.key}_{small.key}"


def merge_key(small: Level, big: Level) -> str:
    """``merge_4k_1g``: folios of level ``small`` merged back into one of level ``big``."""
    return f"merge_{small.key}_{big.key}"


class Metrics:
    """Flat counters (see the module docstring) and the vmemmap gauge."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.vmemmap_bytes = 0
        self.vmemmap_peak_bytes = 0

    def add(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def vmemmap(self, delta: int) -> None:
        self.vmemmap_bytes += delta
        self.vmemmap_peak_bytes = max(self.vmemmap_peak_bytes, self.vmemmap_bytes)

    def splits(self, big: Level) -> int:
        """Splits of folios of level ``big``, whatever they were split into."""
        return sum(self.counters[split_key(big, small)] for small in LEVELS if small < big)

    def merges(self, big: Level) -> int:
        """Merges back into folios of level ``big``, whatever they were merged from."""
        return sum(self.counters[merge_key(small, big)] for small in LEVELS if small < big)

    def _levels(self, name: str) -> dict[str, int]:
        return {level.label: self.counters[per_level(name, level)] for level in LEVELS}

    def as_dict(self) -> dict[str, object]:
        c = self.counters
        return {
            "splits": {level.label: self.splits(level) for level in HUGE_LEVELS},
            "merges": {level.label: self.merges(level) for level in HUGE_LEVELS},
            "split_eagain": c["split_eagain"],
            "stage2_bytes": self._levels("stage2_bytes"),
            "stage2_faults": self._levels("stage2_faults"),
            "host_map_bytes": self._levels("host_map_bytes"),
            "host_faults": self._levels("host_faults"),
            "conversions": {"ok": c["conversions_ok"], "eagain": c["conversion_eagain"]},
            "punch_eagain": c["punch_eagain"],
            "guest_faults": c["guest_faults"],
            "zaps": c["zaps"],
            "leaves_zapped": c["s2_zap_leaf"],
            "tlb_flushes": c["tlb_flush_remote"],
            "bytes_zeroed": c["bytes_zeroed"],
            "arch_prepares": c["arch_prepares"],
            "arch": {k: c[k] for k in ARCH_COUNTERS if k in c},
            "vmemmap_bytes": self.vmemmap_bytes,
            "vmemmap_peak_bytes": self.vmemmap_peak_bytes,
        }
