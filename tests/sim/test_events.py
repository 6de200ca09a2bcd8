"""The event vocabulary (workloads.md §1): frozen, slotted, ranged."""

from __future__ import annotations

import dataclasses

import pytest

from gmemlab.workload import events as ev
from gmemlab.workload.units import GiB, MiB

RANGED = [ev.SetAttr, ev.GmemConvert, ev.Falloc, ev.Punch, ev.HostWrite, ev.Populate, ev.PinUserPages,
          ev.UnpinUserPages, ev.GuestFault, ev.HcMapGpa, ev.PscRun, ev.Pvalidate, ev.Accept, ev.MapGpa, ev.Share,
          ev.Unshare, ev.MmioGuardMap]


def test_events_are_frozen_slotted_ranges():
    for cls in RANGED:
        assert issubclass(cls, ev.Range)
        assert hasattr(cls, "__slots__"), cls
        assert cls.__dataclass_params__.frozen, cls


def test_a_4mib_accept_is_one_event_with_counts():
    accept = ev.Accept(0, 4 * MiB, (GiB, 2 * MiB, 4096))
    assert (accept.pages, accept.gfn_start, accept.gfn_end) == (1024, 0, 1024)
    share = ev.Share(0, 64 * MiB)
    assert share.hypercalls == 16384
    psc = ev.Psc((ev.PscRun(0, 4 * MiB, 2 * MiB),))
    assert psc.entries == 2
    assert ev.HostWrite(0, GiB, stride=200 * 1024).touched_pages == 5243
    with pytest.raises(dataclasses.FrozenInstanceError):
        accept.start = 4096


@pytest.mark.parametrize(("start", "end"), [(4096, 4096), (8192, 4096), (1, 4096), (-4096, 0)])
def test_bad_ranges_rejected(start, end):
    with pytest.raises(ValueError, match="bad range"):
        ev.Punch(start, end)


def test_format_event():
    text = ev.format_event(ev.Pvalidate(0x40000000, 0x40400000, 2 * MiB, validate=True))
    assert text == "Pvalidate [0x40000000-0x40400000) 4MiB page_size=2M validate=True"
    assert ev.format_event(ev.PhaseMark(ev.Phase.SMP, 16)) == "PhaseMark phase=smp cpus=16"
