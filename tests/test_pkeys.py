"""Protection keys make PROT_EXEC-only memory execute-only (found by the lockstep fuzzer inside QEMU's -cpu max,
which has PKU: a read of such a page is SIGSEGV there, readable on a CPU without PKU such as this host's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gmemlab.errors import HostSigsegv
from gmemlab.hostfacts import read_pkeys
from gmemlab.model import ModelBackend
from gmemlab.model.config import HostConfig

P = 4096
PROT_EXEC = 4


@pytest.mark.parametrize("pkeys", [False, True])
def test_exec_only_mapping_reads_fault_only_with_protection_keys(pkeys: bool) -> None:
    backend = ModelBackend("linux-6.18", HostConfig.upstream().with_(pkeys=pkeys))
    m = backend.mmap_anonymous(4 * P)
    m.mprotect(P, 2 * P, PROT_EXEC)
    assert m.read(0, 8) == bytes(8)  # PROT_READ|PROT_WRITE still
    if pkeys:
        with pytest.raises(HostSigsegv, match="execute-only"):
            m.read(P, 8)
    else:
        assert m.read(P, 8) == bytes(8)
    assert backend.mm_features()["pkeys"] is pkeys


def test_read_pkeys_needs_the_os_to_enable_them(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu pku ospke sse\n")
    assert read_pkeys(str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu pku sse\n")  # the CPU has them, the kernel did not enable
    assert not read_pkeys(str(cpuinfo))
    assert not read_pkeys(str(tmp_path / "missing"))


@pytest.mark.parametrize("pkeys", [False, True])
def test_mlock_of_execute_only_memory_fails_to_populate_with_protection_keys(pkeys: bool) -> None:
    """GUP is a data access: with the execute-only pkey, mlock's populate fails (EFAULT -> ENOMEM), measured
    inside QEMU -cpu max on 6.18.2; without pkeys FOLL_FORCE reads it and mlock succeeds."""
    from gmemlab.errors import KvmError

    backend = ModelBackend("linux-6.18", HostConfig.upstream().with_(pkeys=pkeys))
    m = backend.mmap_anonymous(4 * P)
    m.mprotect(P, P, PROT_EXEC)
    if pkeys:
        with pytest.raises(KvmError) as exc:
            m.mlock(P, P, 0)
        assert exc.value.errname == "ENOMEM"
    else:
        m.mlock(P, P, 0)


def test_a_forked_child_inherits_execute_only_memory() -> None:
    """fork() copies the pkey with the VMA: the child's read of PROT_EXEC-only memory faults too (found by the
    lab-VM fuzz run, seed 902 after 643 sequences)."""
    backend = ModelBackend("linux-6.18", HostConfig.upstream().with_(pkeys=True))
    m = backend.mmap_anonymous(4 * P)
    m.mprotect(P, P, PROT_EXEC)
    child = backend.fork().mapping(m)
    with pytest.raises(HostSigsegv, match="execute-only"):
        child.read(P, 8)
    assert child.read(0, 8) == bytes(8)
