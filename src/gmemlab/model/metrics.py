"""System-wide counters of the huge-page model, read by the simulator (DESIGN principle 7).

Every component that restructures folios, maps memory or converts it adds to one :class:`Metrics`
owned by the :class:`~gmemlab.model.kvm_main.ModelBackend`, so counts survive closed files and destroyed
VMs. :meth:`Metrics.as_dict` gives the nested shape the simulator's JSON wants.
"""

from __future__ import annotations

from collections import Counter

LEVEL_NAMES = {1: "4K", 2: "2M", 3: "1G"}
SIZES = ("4K", "2M", "1G")


class Metrics:
    """Flat counters (``"splits.1G"``, ``"stage2_bytes.2M"``, ...) and the vmemmap gauge."""

    def __init__(self) -> None:
        self.c: Counter[str] = Counter()
        self.vmemmap_bytes = 0
        self.vmemmap_peak_bytes = 0

    def add(self, key: str, n: int = 1) -> None:
        self.c[key] += n

    def vmemmap(self, delta: int) -> None:
        self.vmemmap_bytes += delta
        self.vmemmap_peak_bytes = max(self.vmemmap_peak_bytes, self.vmemmap_bytes)

    def _sizes(self, prefix: str, sizes: tuple[str, ...] = SIZES) -> dict[str, int]:
        return {s: self.c[f"{prefix}.{s}"] for s in sizes}

    def as_dict(self) -> dict[str, object]:
        c = self.c
        return {
            "splits": self._sizes("splits", ("1G", "2M")),
            "merges": self._sizes("merges", ("1G", "2M")),
            "split_eagain": c["split_eagain"],
            "stage2_bytes": self._sizes("stage2_bytes"),
            "stage2_faults": self._sizes("stage2_faults"),
            "host_map_bytes": self._sizes("host_map_bytes"),
            "host_faults": self._sizes("host_faults"),
            "conversions": {"ok": c["conversions.ok"], "eagain": c["conversions.eagain"]},
            "punch_eagain": c["punch_eagain"],
            "guest_faults": c["guest_faults"],
            "zaps": c["zaps"],
            "leaves_zapped": c["leaves_zapped"],
            "tlb_flushes": c["tlb_flushes"],
            "bytes_zeroed": c["bytes_zeroed"],
            "arch_prepares": c["arch_prepares"],
            "arch": {k.split(".", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("arch.")},
            "vmemmap_bytes": self.vmemmap_bytes,
            "vmemmap_peak_bytes": self.vmemmap_peak_bytes,
        }
