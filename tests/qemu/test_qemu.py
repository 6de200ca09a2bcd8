"""The QEMU runner: initramfs, kernel images, modules, command line, and real boots where a kernel is at hand
(``GMEMLAB_KERNEL``, else Debian's packaged kernel from the cache ``make test`` fills; skipped otherwise)."""

from __future__ import annotations

import lzma
import os
import shutil
import struct

import pytest

from gmemlab.qemu import KernelImage, KernelImageError, VmError, VmSpec, debian, initramfs, machine, modules, run_in_vm
from gmemlab.qemu.image import release_of


def fake_bzimage(release: str = "6.18.2-test") -> bytes:
    head = bytearray(0x1000)
    head[0x202:0x206] = b"HdrS"
    text = f"{release} (builder@host) #1 SMP".encode() + b"\0"
    head[0x400 : 0x400 + len(text)] = text
    struct.pack_into("<H", head, 0x20E, 0x400 - 0x200)
    return bytes(head)


def parse_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_release_from_the_boot_header(tmp_path):
    assert release_of(fake_bzimage("7.3.4+deb13-amd64")) == "7.3.4+deb13-amd64"
    with pytest.raises(KernelImageError, match="not an x86 bzImage"):
        release_of(b"\x7fELF" + bytes(0x300))
    with pytest.raises(KernelImageError, match="No such file"):
        KernelImage.open(str(tmp_path / "nope"))


def test_modules_beside_a_packaged_image_and_their_dependencies(tmp_path):
    moddir = tmp_path / "lib" / "modules" / "6.18.2-test"
    (moddir / "kernel" / "fs").mkdir(parents=True)
    image = moddir / "vmlinuz"
    image.write_bytes(fake_bzimage())
    (moddir / "kernel" / "fs" / "9p.ko.xz").write_bytes(lzma.compress(b"ELF\0depends=9pnet,netfs\0name=9p\0"))
    (moddir / "kernel" / "fs" / "9pnet.ko").write_bytes(b"ELF\0depends=\0")
    (moddir / "kernel" / "fs" / "netfs.ko.xz").write_bytes(lzma.compress(b"ELF\0depends=\0"))
    k = KernelImage.open(str(image))
    assert (k.release, k.modules_dir) == ("6.18.2-test", str(moddir))
    order = [m.name for m in modules.resolve(k.modules_dir, ("9p", "kvm_amd"))]
    assert order == ["9pnet", "netfs", "9p"]  # dependencies first; kvm_amd is not there (built in)


def test_initramfs_holds_busybox_init_and_modules(tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF")
    mods = [modules.Module("kvm", "kvm.ko", b"KVM", ())]
    entries = parse_cpio(initramfs.build(str(busybox), mods))
    assert entries["init"][1].startswith(b"#!/bin/busybox sh") and entries["init"][0] & 0o111
    assert entries["modules/kvm.ko"][1] == b"KVM" and entries["modules/order"][1] == b"kvm\n"
    assert entries["dev/console"][0] & 0o170000 == 0o020000  # a character device for init's stdio
    assert b"gmemlab-root" in entries["init"][1] and b"@" not in entries["init"][1].replace(b"$@", b"")


def test_qemu_command_line(tmp_path):
    image = tmp_path / "bzImage"
    image.write_bytes(fake_bzimage())
    spec = VmSpec(str(image), memory_mib=2048, numa_nodes=2)
    cmd = machine.qemu_command(spec, KernelImage.open(str(image)), "initrd", str(tmp_path), "tcg")
    line = " ".join(cmd)
    assert "-cpu max" in line and "accel=tcg" in line and "-no-reboot" in line
    assert "readonly=on" in line and f"path={tmp_path}," in line
    assert line.count("memory-backend-ram") == 2 and "size=1024M" in line
    kvm = machine.qemu_command(VmSpec(str(image), numa_nodes=1), KernelImage.open(str(image)), "i", "d", "kvm")
    assert "-cpu host" in " ".join(kvm) and "memory-backend-ram" not in " ".join(kvm)


def test_archive_uri_from_this_machines_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "x.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: s\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n")
    assert debian.archive_uri(str(tmp_path)) == "http://mirror.invalid/debian"
    with pytest.raises(VmError, match="no Debian archive"):
        debian.archive_uri(str(tmp_path / "empty"))


# -- real boots -----------------------------------------------------------------------------------------------

def _kernel() -> str | None:
    return os.environ.get("GMEMLAB_KERNEL") or debian.cached_kernel()


def _why_not() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed (make vm-deps)"
    if initramfs.find_busybox() is None:
        return "no static busybox (busybox-static)"
    if _kernel() is None:
        return "no kernel image: set GMEMLAB_KERNEL or run make test (it fetches Debian's packaged kernel)"
    return None


needs_vm = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


@needs_vm
def test_boot_runs_the_command_with_this_environment():
    out: list[bytes] = []
    script = 'test -c /dev/kvm && echo "kvm $(cat /sys/devices/system/node/online) $PWD"; exit 7'
    result = run_in_vm(VmSpec(str(_kernel()), timeout=300), ["sh", "-c", script], sink=out.append)
    assert result.status == 7 and result.stage == "done" and result.kvm == "present"
    assert b"".join(out).decode().strip() == f"kvm 0-1 {os.getcwd()}"
    assert result.boot_seconds is not None and result.tsc_khz
    assert result.run_dir is not None and os.path.exists(os.path.join(result.run_dir, "console.log"))
    shutil.rmtree(result.run_dir)


@needs_vm
def test_a_kernel_that_cannot_start_init_is_a_clear_error():
    with pytest.raises(VmError) as ei:
        run_in_vm(VmSpec(str(_kernel()), append="rdinit=/nonexistent init=/nonexistent", boot_timeout=120,
                         timeout=150), ["true"])
    text = str(ei.value)
    assert "did not reach the command" in text or "QEMU exited" in text
    assert "console (last lines)" in text and "kept in" in text
    shutil.rmtree(text.rsplit("kept in ", 1)[1].strip(), ignore_errors=True)


def test_files_left_in_the_results_share_are_collected(tmp_path, monkeypatch):
    """fuzz --kernel saves a failing sequence in $GMEMLAB_VM_OUT (the host's files are read-only in the guest);
    the host copies it to --save after the run, and removes the run directory after a clean run."""
    import gmemlab.qemu as qemu
    from gmemlab.cli.vm import run_in_vm_cli
    from gmemlab.qemu.machine import VmResult

    seen = {}

    def fake_run(spec, argv, sink=None, env=None):  # type: ignore[no-untyped-def]
        seen["keep"] = spec.keep
        run_dir = tmp_path / f"run{len(seen)}"
        run_dir.mkdir()
        (run_dir / "found.json").write_text("[1]")
        return VmResult(seen.get("status", 1), "done", "present", "overlay", "tcg", "6.18.2", 1.0, 2.0, str(run_dir))

    monkeypatch.setattr(qemu, "run_in_vm", fake_run)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"")
    dest = tmp_path / "out" / "found.json"
    dest.parent.mkdir()
    assert run_in_vm_cli(kernel, ["true"], collect={"found.json": dest}) == 1
    assert seen["keep"] and dest.read_text() == "[1]"
    seen["status"] = 0
    dest.unlink()
    assert run_in_vm_cli(kernel, ["true"], collect={"found.json": dest}) == 0
    assert dest.read_text() == "[1]" and not (tmp_path / "run2").exists()
