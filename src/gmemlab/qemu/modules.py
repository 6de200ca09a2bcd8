"""Kernel modules a guest needs before it can mount this machine's root and open ``/dev/kvm``.

A distribution kernel builds 9p, overlayfs and KVM as modules (Debian's: ``CONFIG_NET_9P_VIRTIO=m``,
``CONFIG_9P_FS=m``, ``CONFIG_KVM=m``). :func:`resolve` finds each wanted module under
``<modules_dir>/kernel`` together with everything it depends on (the ``depends=`` field of its
``.modinfo`` section, which is what ``depmod`` reads), dependencies first, and returns them uncompressed so
busybox ``insmod`` can load them without a decompressor. A module that is not there is assumed built in;
the guest reports what is missing once it has booted.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
from dataclasses import dataclass

from .image import KernelImageError

# Root over virtio-9p, a writable overlay, and KVM for whichever vendor the (virtual) CPU is.
WANTED = ("9pnet_virtio", "9p", "overlay", "kvm_amd", "kvm_intel")
_SUFFIXES = (".ko", ".ko.xz", ".ko.gz")


@dataclass(frozen=True)
class Module:
    name: str
    path: str
    data: bytes
    depends: tuple[str, ...]


def _canonical(name: str) -> str:
    return name.replace("-", "_")


def index(modules_dir: str) -> dict[str, str]:
    """Module name -> file, for every module under ``modules_dir/kernel``."""
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(os.path.join(modules_dir, "kernel")):
        for f in files:
            for suffix in _SUFFIXES:
                if f.endswith(suffix):
                    out[_canonical(f[: -len(suffix)])] = os.path.join(dirpath, f)
    return out


def load(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise KernelImageError(f"module {path}: {exc.strerror}") from None
    if path.endswith(".xz"):
        return lzma.decompress(raw)
    if path.endswith(".gz"):
        return gzip.decompress(raw)
    return raw


_DEPENDS = re.compile(rb"\0depends=([^\0]*)\0")


def depends_of(data: bytes) -> tuple[str, ...]:
    found = _DEPENDS.search(data)
    if not found or not found.group(1):
        return ()
    return tuple(_canonical(d) for d in found.group(1).decode().split(",") if d)


def resolve(modules_dir: str, wanted: tuple[str, ...] = WANTED) -> list[Module]:
    """The wanted modules that exist as files, with their dependencies, in load order."""
    files = index(modules_dir)
    order: list[Module] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in files:
            return
        seen.add(name)
        data = load(files[name])
        deps = depends_of(data)
        for dep in deps:
            visit(dep)
        order.append(Module(name, files[name], data, deps))

    for name in wanted:
        visit(_canonical(name))
    return order
