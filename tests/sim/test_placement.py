"""Where the guest puts its shared pages and in which order it accepts memory (docs/placement.md §0-§2)."""

from __future__ import annotations

import itertools
import random

import pytest

from gmemlab.arch.acceptance import Acceptance
from gmemlab.uapi import PAGE_SIZE
from gmemlab.workload import events as ev
from gmemlab.workload.derived import q35_low_top
from gmemlab.workload.units import GiB, KiB, MiB, TiB

from .conftest import directed, events

NO_CHURN = ["runtime_churn.rate_per_s=0", "runtime_s=1"]


def shared(stream):
    """(start, end) of every range the VMM made shared, in order, adjacent conversions joined."""
    out: list[tuple[int, int]] = []
    for e in stream:
        if isinstance(e, ev.GmemConvert) and e.to_shared:
            if out and out[-1][1] == e.start and e.size > 4 * KiB:
                out[-1] = (out[-1][0], e.end)
            else:
                out.append((e.start, e.end))
    return out


def test_q35_low_ram():
    """pc_q35_init: 2 GiB below 4 GiB once RAM reaches 2.75 GiB, else all of it."""
    assert q35_low_top(64 * GiB) == 2 * GiB
    assert q35_low_top(2 * GiB) == 2 * GiB
    assert q35_low_top(2816 * MiB) == 2 * GiB
    assert q35_low_top(2 * GiB + 512 * MiB) == 2 * GiB + 512 * MiB


def test_snp_shared_regions_where_linux_puts_them():
    stream = events("snp-lazy-accept-64g", NO_CHURN)
    ranges = shared(stream)
    (swiotlb,) = [r for r in ranges if r[1] - r[0] == GiB]
    # memblock_alloc_low: top-down below 4 GiB (q35: 2 GiB), under the firmware's reservations; 4K- not
    # 2M-aligned; a 1 GiB pool straddles the 1 GiB folio boundary
    assert swiotlb[1] <= 2 * GiB - 64 * MiB and swiotlb[0] % (2 * MiB) and swiotlb[0] < GiB < swiotlb[1]
    pages = [r for r in ranges if r[1] - r[0] == 4 * KiB]
    # GHCBs and per-CPU pages: under the 1 GiB memmap at the top of RAM, in the 1G folio below it
    top = [r for r in pages if 62 * GiB <= r[0] < 63 * GiB]
    assert len(top) == 32
    ghcbs = sorted(r[0] for r in top if (64 * GiB - r[0]) > 1 * GiB + 16 * 512 * KiB)
    assert len(ghcbs) == 16 and all(b - a == 12 * KiB for a, b in itertools.pairwise(ghcbs))
    assert ghcbs[0] // (2 * MiB) == ghcbs[-1] // (2 * MiB)  # all 16 GHCBs share one 2M folio
    bss = [r for r in pages if 48 * MiB <= r[0] < 50 * MiB]  # in the kernel image, 2 MiB-aligned, low
    assert len(bss) == 512
    # boot-time buddy items (atomic KERNEL pool, virtio rings): just above 4 GiB (RAM offset 2 GiB)
    rings = [r for r in ranges if r[1] - r[0] == 8 * KiB]
    assert len(rings) == 19 and all(2 * GiB <= r[0] < 3 * GiB for r in rings)  # within what is accepted
    # 1G folios holding shared pages: [0,1G) image and DMA pools, [1G,2G) swiotlb, [2G,3G) buddy items and
    # the one under the memmap -- the handful Michael Roth counted for 16 GB (docs/placement.md §2.1)
    folios = {a // GiB for a, b in ranges} | {(b - 1) // GiB for a, b in ranges}
    assert folios == {0, 1, 2, 62}


def test_bss_decrypted_goes_shared_by_msr_and_its_tail_back_private():
    stream = events("snp-lazy-accept-64g", NO_CHURN)
    boot = next(i for i, e in enumerate(stream) if isinstance(e, ev.PhaseMark) and e.phase == ev.Phase.BOOT)
    msr = [e for e in directed(stream[boot:], ev.Psc, to_shared=True) if e.entries == 1]
    assert len(msr) >= 512
    back = [e for e in stream if isinstance(e, ev.GmemConvert) and not e.to_shared
            and 48 * MiB + 12 * KiB <= e.start < 50 * MiB]
    assert sum(e.size for e in back) == 2 * MiB - 12 * KiB


def test_explicit_alternatives_move_the_regions():
    """location = scattered (uniform over RAM) is an explicit alternative to the rule."""
    rule = shared(events("snp-lazy-accept-64g", NO_CHURN))
    moved = shared(events("snp-lazy-accept-64g", [*NO_CHURN, "shared_regions.ghcb.location=scattered"]))
    assert rule != moved
    folios_rule = {a // GiB for a, _ in rule}
    folios_moved = {a // GiB for a, _ in moved}
    assert len(folios_moved) > len(folios_rule)


def test_tdx_has_no_ghcb_or_bss_and_accepts_in_firmware_on_every_vcpu():
    stream = events("tdx-boot-64g", NO_CHURN)
    firmware = next(e for e in stream if isinstance(e, ev.PhaseMark) and e.phase == ev.Phase.FIRMWARE)
    assert firmware.cpus == 16
    ranges = shared(stream)
    assert not [r for r in ranges if r[1] - r[0] == 4 * KiB]


def _runs_expanded(acc, amount):
    out = []
    for start, end, times in acc.advance_runs(amount):
        out += [(start + k * acc.chunk, end + k * acc.chunk) for k in range(times)]
    return out


@pytest.mark.parametrize("seed", range(40))
def test_advance_runs_is_advance_call_by_call(seed):
    """The lazy frontier's runs (counted from the range map) are exactly the calls one by one."""
    rng = random.Random(seed)
    ram = rng.choice([64, 130, 257, 1024]) * MiB + rng.choice([0, 4 * KiB, 2 * MiB])
    chunk, unit = rng.choice([(4 * MiB, 2 * MiB), (4 * MiB, 4 * KiB), (8 * MiB, 2 * MiB), (4 * MiB, 4 * MiB)])
    origin = rng.choice([0, 2 * MiB, 6 * MiB])
    a, b = Acceptance(ram, chunk, unit, origin), Acceptance(ram, chunk, unit, origin)
    for _ in range(rng.randrange(4)):  # out-of-order acceptances (memblock, shared regions)
        s = rng.randrange(0, ram // PAGE_SIZE) * PAGE_SIZE
        e = min(ram, s + rng.choice([4 * KiB, 2 * MiB, 5 * MiB, 33 * MiB]))
        assert list(a.accept(s, e)) == list(b.accept(s, e))
    for step in (rng.randrange(ram // 3), ram):
        amount = a.accepted + step
        assert _runs_expanded(a, amount) == list(b.advance(amount))
        assert (a.accepted, a.frontier, a.unaccepted()) == (b.accepted, b.frontier, b.unaccepted())


def test_advance_runs_counts_instead_of_walking():
    acc = Acceptance(64 * TiB, 4 * MiB, 2 * MiB, 2 * GiB)
    runs = list(acc.advance_runs(64 * TiB))
    assert len(runs) <= 4 and acc.unaccepted() == 2 * GiB  # the firmware's part below the origin is left
