"""Derived counts (``scenarios describe``) agree with the generated streams (workloads.md §6)."""

from __future__ import annotations

from gmemlab.arch import generate
from gmemlab.sim.summary import derived_counts
from gmemlab.workload import events as ev
from gmemlab.workload.scenario import load_scenario


def test_msr_exits_in_describe_match_the_stream():
    """The MSR-protocol counts of describe agree with the generated events (one exit per 4K page)."""
    sc = load_scenario("snp-lazy-accept-64g", ["guest_mem=4GiB", "runtime_s=0"])
    rows = {c.quantity: c.value for c in derived_counts(sc)}
    msr = sum(int(rows[f"{name}: MSR-protocol exits"]) for name in ("bss_decrypted", "percpu_decrypted", "ghcb"))
    stream = ev.expand(generate(sc, 5))
    single = [e for e in stream if isinstance(e, ev.Psc) and e.entries == 1 and e.runs[0].size == 4096]
    assert msr == 512 + 16 + 16
    assert len(single) >= msr  # plus GHCB-protocol single-page conversions (OVMF's GHCBs, runtime buffers)


def test_section6_rows_in_describe():
    rows = {c.quantity: c.value for c in derived_counts(load_scenario("snp-lazy-accept-64g"))}
    assert rows["4K / 2M / 1G pages"] == "16,777,216 / 32,768 / 64"
    assert rows["accepted by the firmware"] == "2GiB"  # q35 RAM below 4 GiB (OVMF, docs/placement.md F1)
    assert rows["memblock top block (setup_arch)"] == "1066MiB"  # 1 GiB memmap + 8 MiB per-CPU + 32 MiB ...
    assert rows["lazy 4 MiB steps (total, about)"] == "15,872"
    assert rows["SNP accept: PSC VMGEXITs / userspace exits"] == "15,872 / 15,872"
    assert rows["SNP accept: PVALIDATE"].startswith("31,744 at 2MiB (or 16,252,928")
    assert rows["shared region swiotlb"] == "1GiB"
    assert rows["swiotlb: PSC entries (2M + 4K) -> VMGEXITs"] == "aligned 512+0 -> 8; unaligned <= 511+512 -> 16"
    assert rows["SET_ATTR(all, private)"] == "16,777,216 xarray stores, ~1.98 s"
    tdx = {c.quantity: c.value for c in derived_counts(load_scenario("tdx-boot-64g"))}
    assert tdx["swiotlb: MapGPA userspace exits"] == "512"
    assert tdx["TDX accept: 4K accepts at 4K S-EPT"] == "16,252,928, ~130 s of vCPU time"
