"""A kernel image to boot: its release string and where its modules are.

The release comes from the x86 boot protocol header (``Documentation/arch/x86/boot.rst``): ``HdrS`` at
0x202 and, at 0x20E, a 16-bit pointer (relative to 0x200) to the version string, whose first word is the
release (``uname -r``). Modules are looked for where a distribution package puts them next to the image
(``.../lib/modules/<release>/vmlinuz``, Debian's layout), or in a directory given explicitly.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ..errors import GmemlabError


class KernelImageError(GmemlabError):
    """The file given as a kernel is not a bootable x86 kernel image (or cannot be read)."""


@dataclass(frozen=True)
class KernelImage:
    path: str
    release: str
    modules_dir: str | None  # .../lib/modules/<release>, None for a kernel without loadable modules

    @classmethod
    def open(cls, path: str, modules_dir: str | None = None) -> KernelImage:
        path = os.path.abspath(os.path.expanduser(path))
        try:
            with open(path, "rb") as f:
                head = f.read(0x10000)
        except OSError as exc:
            raise KernelImageError(f"kernel image {path}: {exc.strerror}") from None
        release = release_of(head, path)
        if modules_dir is None:
            modules_dir = _modules_next_to(path, release)
        elif not os.path.isdir(modules_dir):
            raise KernelImageError(f"modules directory {modules_dir} does not exist")
        return cls(path, release, modules_dir)


def release_of(head: bytes, path: str = "kernel image") -> str:
    """``uname -r`` of a bzImage from its setup header."""
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise KernelImageError(f"{path} is not an x86 bzImage (no 'HdrS' boot header at 0x202)")
    (pointer,) = struct.unpack_from("<H", head, 0x20E)
    start = 0x200 + pointer
    end = head.find(b"\0", start)
    if pointer == 0 or end < 0:
        raise KernelImageError(f"{path}: the boot header has no kernel version string")
    text = head[start:end].decode("ascii", "replace")
    return text.split(" ", 1)[0]


def _modules_next_to(path: str, release: str) -> str | None:
    directory = os.path.dirname(path)
    if os.path.basename(directory) == release and os.path.isdir(os.path.join(directory, "kernel")):
        return directory
    return None
