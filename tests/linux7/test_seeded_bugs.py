"""The in-place conformance cases can fail: each seeded model bug is caught by the case written for it."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from gmemlab.conformance import cases_for, run_case
from gmemlab.model import HostConfig, ModelBackend
from gmemlab.model import gmem_attributes as ga
from gmemlab.model.gmem import GmemInode
from gmemlab.model.host import ModelHostMapping

ON = HostConfig.upstream().with_(gmem_in_place_conversion=True)


def run(name: str, profile: str = "linux-7.4") -> str:
    case = next(c for c in cases_for(profile) if c.name == name)
    result = run_case(case, lambda p: ModelBackend(p, ON), "model", profile)
    return f"{result.status}: {result.detail}"


def _check_refs_before_unmap(inode, start, end, private, offset):  # type: ignore[no-untyped-def]
    """Bug: the reference check runs before the host mappings are unmapped (EAGAIN leaves the PTEs)."""
    bad = inode.first_unsafe_folio(start, end)
    if private and bad is not None:
        raise ga._Refused(errno.EAGAIN, 9, "busy", max(bad[0] << 12, offset))
    return ORIGINAL(inode, start, end, private, offset)


ORIGINAL = ga.convert_range


def _noop_unmaps(inode, start, end, private, offset):  # type: ignore[no-untyped-def]
    """Bug: the no-op early return comes after the unmap."""
    inode.unmap_host(start, end)
    return ORIGINAL(inode, start, end, private, offset)


def _reports_offset(inode, start, end, private, offset):  # type: ignore[no-untyped-def]
    """Bug: EAGAIN reports the offset asked for, not the first offending folio."""
    try:
        return ORIGINAL(inode, start, end, private, offset)
    except ga._Refused as exc:
        if exc.errno == errno.EAGAIN:
            exc.error_offset = offset
        raise


BUGS: list[tuple[str, Callable[[pytest.MonkeyPatch], None], str]] = [
    ("refcount check before unmap",
     lambda mp: mp.setattr(ga, "convert_range", _check_refs_before_unmap),
     "attributes2_step09_unmap_before_refcount_check"),
    ("no-op unmaps", lambda mp: mp.setattr(ga, "convert_range", _noop_unmaps), "attributes2_step09_noop"),
    ("EAGAIN offset", lambda mp: mp.setattr(ga, "convert_range", _reports_offset),
     "attributes2_step09_eagain_offset"),
    ("punch makes the page shared",
     lambda mp: mp.setattr(GmemInode, "kvm_gmem_punch_hole",
                           lambda self, s, e: (self.shareability.store(s, min(e, self.npages), True), 0)[1]),
     "conversions_truncate"),
    ("forked mappings not in i_mmap", lambda mp: mp.setattr(ModelHostMapping, "fork_into", _fork_outside_i_mmap),
     "conversions_forked_accesses"),
    ("transient references ignored",
     lambda mp: mp.setattr(ModelHostMapping, "vmsplice", lambda self, o, n: type("P", (), {"unpin": lambda s: 0})()),
     "conversions_elevated_refcount_vmsplice"),
    ("step 4 after the no-op return",
     lambda mp: mp.setattr(ga, "kvm_gmem_set_attributes", _step4_late), "attributes2_step04_no_private_memory"),
]


def _fork_outside_i_mmap(self, space):  # type: ignore[no-untyped-def]
    """Bug: the child's copy of a mapping is not added to the file's i_mmap, so unmap_mapping_pages misses it."""
    child = ORIGINAL_FORK(self, space)
    if self.file is not None:
        self.file.inode.mappings.remove(child)
    return child


ORIGINAL_FORK = ModelHostMapping.fork_into


def _step4_late(file, arg):  # type: ignore[no-untyped-def]
    inode = file.inode
    start, end = arg.offset >> 12, (arg.offset + arg.size) >> 12
    if arg.size and not arg.attributes and arg.offset + arg.size <= inode.size and inode.shareability.all_shared(
            start, end):
        return arg
    return ORIGINAL_SET(file, arg)


ORIGINAL_SET = ga.kvm_gmem_set_attributes


@pytest.mark.parametrize("what,seed,case", BUGS, ids=[b[0] for b in BUGS])
def test_seeded_bug_is_caught(monkeypatch: pytest.MonkeyPatch, what: str,
                              seed: Callable[[pytest.MonkeyPatch], None], case: str) -> None:
    assert run(case).startswith("pass"), "the case must pass on the unmodified model"
    seed(monkeypatch)
    assert run(case).startswith("fail"), f"{case} did not notice: {what}"
