"""The guest's initramfs: a static busybox, the modules it must load, and our init script.

The init (stage 1, busybox ``sh``) loads the modules, mounts the writable results share at ``/out`` and this
machine's root read-only at ``/host``, puts a tmpfs overlay on top where overlayfs exists, records whether
``/dev/kvm`` is usable, then runs ``/run/gmemlab-out/run.sh`` (written by the host) chrooted into that root
with its output on the second serial port. Every step is written to ``/out/stage`` so the host can say
where a guest that never finished stopped. It ends with ``reboot -f``; QEMU runs with ``-no-reboot``, so the
reboot ends QEMU. The archive is the kernel's "newc" cpio format (``Documentation/driver-api/early-userspace``).
"""

from __future__ import annotations

import os
import stat
import struct

from .modules import Module

SHARE_ROOT = "gmemlab-root"
SHARE_OUT = "gmemlab-out"
GUEST_OUT = "/run/gmemlab-out"  # where the results share appears for the command

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { echo "gmemlab-init: $*" > /dev/kmsg; }
fail() { log "FAILED: $*"; echo "failed: $*" > /out/stage 2>/dev/null; sync; reboot -f; }
for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" 2>> /insmod.log || log "insmod $m: $(tail -n 1 /insmod.log)"
done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 @OUT@ /out || fail "mount of the results share (9p)"
echo modules > /out/stage
cp /insmod.log /out/insmod.log 2>/dev/null
P9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o $P9,ro,cache=loose @ROOT@ /host || fail "mount of the root share (9p)"
R=/host
mount -t tmpfs -o size=50% tmpfs /rw
mkdir -p /rw/upper /rw/work
if mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot 2>> /out/insmod.log; then
    R=/newroot
    echo overlay > /out/rootfs
else
    echo read-only > /out/rootfs
fi
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run
mkdir -p $R@GUEST_OUT@ $R/run/tmp
mount --bind /out $R@GUEST_OUT@
echo root > /out/stage
if [ -c /dev/kvm ]; then echo present > /out/kvm; else echo missing > /out/kvm; fi
grep -E -o -w 'svm|vmx|npt|ept' /proc/cpuinfo | sort -u | tr '\n' ' ' > /out/cpuflags
stty -F /dev/ttyS1 raw -echo 2>/dev/null
echo run > /out/stage
chroot $R /bin/sh @GUEST_OUT@/run.sh < /dev/null > /dev/ttyS1 2>&1
echo $? > /out/status
echo done > /out/stage
dmesg > /out/dmesg
sync
reboot -f
"""


def init_script() -> bytes:
    text = INIT.replace("@OUT@", SHARE_OUT).replace("@ROOT@", SHARE_ROOT).replace("@GUEST_OUT@", GUEST_OUT)
    return text.encode()


class Cpio:
    """A "newc" cpio archive built in memory."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.ino += 1
        blob = header + encoded
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self.parts.append(blob)

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def bytes(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


def build(busybox: str, modules: list[Module]) -> bytes:
    """The initramfs as bytes (uncompressed: it is built per run and never leaves this machine)."""
    archive = Cpio()
    for d in ("bin", "dev", "proc", "sys", "modules", "out", "host", "rw", "newroot", "tmp"):
        archive.directory(d)
    archive.chardev("dev/console", 5, 1)
    with open(busybox, "rb") as f:
        archive.file("bin/busybox", f.read(), 0o755)
    archive.file("init", init_script(), 0o755)
    for m in modules:
        archive.file(f"modules/{m.name}.ko", m.data)
    archive.file("modules/order", "".join(f"{m.name}\n" for m in modules).encode())
    return archive.bytes()


def find_busybox() -> str | None:
    """A statically linked busybox (Debian's ``busybox-static`` installs /bin/busybox)."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path) and _is_static(path):
            return path
    return None


def _is_static(path: str) -> bool:
    """An ELF without a PT_INTERP program header needs no dynamic loader."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # 3 = PT_INTERP
