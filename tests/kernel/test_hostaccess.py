"""Proof that GUP-based host accesses (process_vm_readv/writev) equal direct CPU accesses.

For each key case the same access runs twice on identically set-up guest_memfds:

* **direct**: a forked child touches the mapping with the CPU (``memset``/``memcpy`` via ctypes), page by
  page ascending, reporting each page's offset through a pipe before touching it; when it dies, the
  signal it died of and the last offset reported are the kernel's verdict;
* **gup**: the backend's :class:`~gmemlab.kernel.mapping.KernelHostMapping` in this process, which must
  raise HostSigbus/HostSigsegv with the same offset, and leave the same bytes behind.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import struct

import pytest

from gmemlab import uapi
from gmemlab.backend import PROT_NONE, PROT_READ, PROT_WRITE
from gmemlab.errors import HostSigbus, HostSigsegv

P = uapi.PAGE_SIZE
PUNCH = uapi.FALLOC_FL_PUNCH_HOLE | uapi.FALLOC_FL_KEEP_SIZE


def _runs(offset: int, length: int):
    end = offset + length
    while offset < end:
        n = min(end, (offset // P + 1) * P) - offset
        yield offset, n
        offset += n


def direct_access(address: int, offset: int, length: int, write: bool, byte: int = 0xAB):
    """CPU access in a forked child: returns ("ok", data) or (signal name, offset of the failing touch).

    The offset is the first byte the child touched in the page that killed it.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level handlers, die of the signal like a C program
        try:
            os.close(r)
            faulthandler.disable()
            signal.signal(signal.SIGBUS, signal.SIG_DFL)
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            data = b""
            for off, n in _runs(offset, length):
                os.write(w, b"T" + struct.pack("<Q", off))
                if write:
                    ctypes.memset(address + off, byte, n)
                else:
                    data += ctypes.string_at(address + off, n)
            os.write(w, b"D" + data)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks)
    if os.WIFSIGNALED(status):
        last = out.rindex(b"T")
        return signal.Signals(os.WTERMSIG(status)).name, struct.unpack("<Q", out[last + 1 : last + 9])[0]
    assert os.WEXITSTATUS(status) == 0
    i = 0
    while out[i : i + 1] == b"T":
        i += 9
    assert out[i : i + 1] == b"D"
    return "ok", out[i + 1 :]


def gup_access(mapping, offset: int, length: int, write: bool, byte: int = 0xAB):
    try:
        if write:
            mapping.fill(offset, length, byte)
            return "ok", b""
        return "ok", mapping.read(offset, length)
    except HostSigbus as exc:
        assert exc.write == write and exc.offset % P == 0
        return "SIGBUS", exc.offset
    except HostSigsegv as exc:
        assert exc.write == write and exc.offset % P == 0
        return "SIGSEGV", exc.offset


CASES = [
    # (id, gmem flags, gmem pages, map pages, map offset pages, prot, access offset, length, write, punch)
    ("fine write", 3, 4, 4, 0, PROT_READ | PROT_WRITE, 0, 4 * P, True, False),
    ("fine read", 3, 4, 4, 0, PROT_READ | PROT_WRITE, 100, 3 * P, False, False),
    ("beyond EOF write (memset over 4x)", 3, 4, 16, 0, PROT_READ | PROT_WRITE, 0, 16 * P, True, False),
    ("beyond EOF write, unaligned start", 3, 4, 16, 0, PROT_READ | PROT_WRITE, 4 * P - 100, 200, True, False),
    ("beyond EOF read at size", 3, 4, 16, 0, PROT_READ | PROT_WRITE, 4 * P, 1, False, False),
    ("beyond EOF read at size+3 pages", 3, 4, 16, 0, PROT_READ | PROT_WRITE, 7 * P + 5, 10, False, False),
    ("mapping at offset == size", 3, 4, 1, 4, PROT_READ | PROT_WRITE, 10, 1, True, False),
    ("non-INIT_SHARED write", 1, 4, 4, 0, PROT_READ | PROT_WRITE, 0, 4 * P, True, False),
    ("non-INIT_SHARED read mid-page", 1, 4, 4, 0, PROT_READ | PROT_WRITE, 123, 8, False, False),
    ("PROT_READ write -> SIGSEGV", 3, 4, 4, 0, PROT_READ, 8, 16, True, False),
    ("PROT_READ read", 3, 4, 4, 0, PROT_READ, 8, 16, False, False),
    ("PROT_NONE read -> SIGSEGV", 3, 4, 4, 0, PROT_NONE, 0, 1, False, False),
    ("punched hole reads zero", 3, 4, 4, 0, PROT_READ | PROT_WRITE, 0, 4 * P, False, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gup_equals_direct_access(vm, case):
    _, flags, pages, map_pages, map_off, prot, off, length, write, punch = case
    results = []
    contents = []
    for method in ("direct", "gup"):
        g = vm.create_guest_memfd(pages * P, flags)
        if flags & 2:  # same initial contents for both: a pattern, optionally a punched hole
            init = g.mmap(pages * P)
            init.fill(0, pages * P, 0x11)
            if punch:
                g.fallocate(PUNCH, P, P)
        m = g.mmap(map_pages * P, map_off * P, prot)
        if method == "direct":
            results.append(direct_access(m.address, off, length, write))
        else:
            results.append(gup_access(m, off, length, write))
        if flags & 2 and map_off == 0:
            contents.append(init.read(0, pages * P))
    direct, gup = results
    if direct[0] != "ok":  # the child reports the first byte it touched; exceptions carry its page
        direct = (direct[0], direct[1] - direct[1] % P)
    assert direct == gup
    if contents:
        assert contents[0] == contents[1]
    verdict = direct if direct[0] != "ok" else ("ok",)
    assert verdict == EXPECTED[case[0]]
    if case[0] == "beyond EOF write, unaligned start":
        assert contents[0][4 * P - 100 :] == b"\xab" * 100


EXPECTED = {  # the kernel's verdicts (realkernel.md rows), so the comparison above is never vacuous
    "fine write": ("ok",),
    "fine read": ("ok",),
    "beyond EOF write (memset over 4x)": ("SIGBUS", 4 * P),  # 139, 165
    "beyond EOF write, unaligned start": ("SIGBUS", 4 * P),
    "beyond EOF read at size": ("SIGBUS", 4 * P),  # 165
    "beyond EOF read at size+3 pages": ("SIGBUS", 7 * P),  # 140
    "mapping at offset == size": ("SIGBUS", 0),  # 128
    "non-INIT_SHARED write": ("SIGBUS", 0),  # 160, 166
    "non-INIT_SHARED read mid-page": ("SIGBUS", 0),  # 161
    "PROT_READ write -> SIGSEGV": ("SIGSEGV", 0),  # 134
    "PROT_READ read": ("ok",),  # 133
    "PROT_NONE read -> SIGSEGV": ("SIGSEGV", 0),
    "punched hole reads zero": ("ok",),  # 197
}


def test_anonymous_mapping_and_bounds(kb):
    tail = kb.mmap_anonymous(P - 10)  # the VMA covers the whole page, like the kernel's
    tail.write(P - 4, b"tail")
    assert tail.read(P - 4, 4) == b"tail"
    m = kb.mmap_anonymous(2 * P)
    m.write(P - 2, b"abcd")
    assert m.read(P - 2, 4) == b"abcd"
    with pytest.raises(HostSigsegv) as ei:
        m.write(2 * P - 2, b"wxyz")  # runs off the mapping's end: first 2 bytes land
    assert ei.value.offset == 2 * P
    assert m.read(2 * P - 2, 2) == b"wx"
    m.munmap()
    m.munmap()
    with pytest.raises(HostSigsegv, match="unmapped"):
        m.read(0, 1)
