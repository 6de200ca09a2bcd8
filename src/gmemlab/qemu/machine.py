"""Run a command inside a kernel booted under QEMU and bring its output and exit status back.

:func:`run_in_vm` builds the initramfs (:mod:`.initramfs`), starts ``qemu-system-x86_64`` with

* the kernel console on the first serial port, written to ``console.log`` in the run directory;
* the command's output on the second serial port, streamed to the caller as it comes;
* this machine's ``/`` as a read-only virtio-9p share, the run directory as a writable one;
* hardware virtualisation only where the guest can itself use it (``/dev/kvm`` here and a CPU with
  VMX/SVM to pass on), TCG with ``-cpu max`` otherwise: TCG emulates SVM with nested paging, so KVM runs
  inside the guest even on a host without nested virtualisation (this machine's ``kvm_pvm``);
* ``numa_nodes`` memory-only NUMA nodes, so NUMA cases see more than one node;
* ``-no-reboot``: the guest's final ``reboot -f`` (or a panic, with ``panic=-1``) ends QEMU.

Two clocks bound a run: ``boot_timeout`` until the guest is about to start the command, ``timeout`` for
the whole run. On either, or on any exception, QEMU's process group is killed; nothing is left running.
The run directory (console, dmesg, module log) is deleted after a clean run and kept, with its path in
the result and the error, otherwise.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import GmemlabError
from . import initramfs, modules
from .image import KernelImage

QEMU = "qemu-system-x86_64"
# Variables the command inside sees from the caller's environment (plus GMEMLAB_*, PYTEST_*, HYPOTHESIS_*).
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "COLUMNS", "LINES", "CI", "VIRTUAL_ENV", "PYTHONPATH",
            "NO_COLOR", "FORCE_COLOR")
PASS_PREFIXES = ("GMEMLAB_", "PYTEST_", "HYPOTHESIS_")
STAGES = {
    "": "QEMU started, the kernel never reached our init (no 'modules' stage): see the console",
    "modules": "init ran and loaded modules, but the root share did not mount",
    "root": "the root share mounted, the command did not start",
    "run": "the command was running",
    "done": "the command finished",
}


class VmError(GmemlabError):
    """The VM could not be started, did not boot, or timed out; the message says which and where to look."""


@dataclass(frozen=True)
class VmSpec:
    kernel: str
    modules_dir: str | None = None
    memory_mib: int = 2048
    cpus: int = 1
    numa_nodes: int = 2
    accel: str = "auto"  # auto | kvm | tcg
    timeout: float = 1800.0
    boot_timeout: float = 180.0
    append: str = ""
    keep: bool = False  # keep the run directory even after a clean run
    qemu: str = QEMU


@dataclass
class VmResult:
    status: int | None  # the command's exit status; None if it never finished
    stage: str
    kvm: str  # "present" / "missing" / "" (never checked)
    rootfs: str  # "overlay" / "read-only" / ""
    accel: str
    release: str
    boot_seconds: float | None
    seconds: float
    run_dir: str | None  # kept on failure (or with keep=True)
    console: str = ""
    dmesg: str = ""
    insmod_log: str = ""
    cpu_flags: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def tsc_khz(self) -> float | None:
        """The guest's TSC frequency from its dmesg (0 would make every nested KVM_RUN spin)."""
        found = re.findall(r"tsc: (?:Refined TSC clocksource calibration|Detected): ([0-9.]+) MHz", self.dmesg)
        return float(found[-1]) * 1000 if found else None


def host_accel() -> str:
    """``kvm`` when this machine's /dev/kvm works and its CPU has VMX/SVM to give the guest, else ``tcg``."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return "tcg"
    os.close(fd)
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return "tcg"
    return "kvm" if re.search(r"\b(vmx|svm)\b", flags) else "tcg"


def qemu_command(spec: VmSpec, image: KernelImage, initrd: str, run_dir: str, accel: str) -> list[str]:
    cpu = "host" if accel == "kvm" else "max"
    append = f"console=ttyS0 panic=-1 rdinit=/init loglevel=4 {spec.append}".strip()
    cmd = [
        spec.qemu, "-name", "gmemlab", "-nodefaults", "-no-user-config", "-no-reboot",
        "-machine", f"q35,accel={accel}", "-cpu", cpu, "-m", f"{spec.memory_mib}M", "-smp", str(spec.cpus),
        "-display", "none", "-vga", "none", "-monitor", "none",
        "-kernel", image.path, "-initrd", initrd, "-append", append,
        "-serial", f"file:{os.path.join(run_dir, 'console.log')}",
        "-chardev", "file,id=cmdout,path=/proc/self/fd/1", "-serial", "chardev:cmdout",
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=root,mount_tag={initramfs.SHARE_ROOT}",
        "-fsdev", f"local,id=out,path={run_dir},security_model=none,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=out,mount_tag={initramfs.SHARE_OUT}",
    ]
    nodes = max(1, spec.numa_nodes)
    if nodes > 1:
        per_node = spec.memory_mib // nodes
        for n in range(nodes):
            size = per_node if n < nodes - 1 else spec.memory_mib - per_node * (nodes - 1)
            cmd += ["-object", f"memory-backend-ram,id=mem{n},size={size}M", "-numa",
                    f"node,nodeid={n},memdev=mem{n}" + (f",cpus=0-{spec.cpus - 1}" if n == 0 else "")]
    return cmd


def _env_script(extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k in PASS_ENV or k.startswith(PASS_PREFIXES)}
    if "COLUMNS" not in env:
        env["COLUMNS"] = str(shutil.get_terminal_size((120, 40)).columns)
    env.update({"GMEMLAB_VM": "1", "GMEMLAB_VM_OUT": initramfs.GUEST_OUT, "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(extra)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    # Without overlayfs the root stays read-only: temporary files go to a tmpfs.
    lines.append(f'[ "$(cat {initramfs.GUEST_OUT}/rootfs)" = overlay ] || export TMPDIR=/run/tmp')
    return "\n".join(lines) + "\n"


def _read(run_dir: str, name: str) -> str:
    try:
        with open(os.path.join(run_dir, name), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_in_vm(spec: VmSpec, argv: Sequence[str], sink: Callable[[bytes], None] | None = None,
              cwd: str | None = None, env: dict[str, str] | None = None) -> VmResult:
    """Boot ``spec.kernel``, run ``argv`` inside (in ``cwd``, this process's by default), stream its output
    to ``sink`` and return the outcome. Raises :class:`VmError` when QEMU cannot start or the kernel does
    not reach the command within ``spec.boot_timeout``; a run over ``spec.timeout`` returns status None."""
    if not argv:
        raise VmError("no command to run in the VM")
    image = KernelImage.open(spec.kernel, spec.modules_dir)
    qemu = shutil.which(spec.qemu)
    if qemu is None:
        raise VmError(f"{spec.qemu} not found: install Debian's qemu-system-x86 (make vm-deps does)")
    busybox = initramfs.find_busybox()
    if busybox is None:
        raise VmError("no statically linked busybox at /bin/busybox: install Debian's busybox-static")
    accel = host_accel() if spec.accel == "auto" else spec.accel
    if accel not in ("kvm", "tcg"):
        raise VmError(f"accelerator {spec.accel!r} is not one of auto, kvm, tcg")
    mods = modules.resolve(image.modules_dir) if image.modules_dir else []
    run_dir = tempfile.mkdtemp(prefix="gmemlab-vm-")
    initrd = os.path.join(run_dir, "initramfs.cpio")
    with open(initrd, "wb") as f:
        f.write(initramfs.build(busybox, mods))
    cwd = os.path.abspath(cwd or os.getcwd())
    with open(os.path.join(run_dir, "env.sh"), "w") as f:
        f.write(_env_script(env or {}))
    with open(os.path.join(run_dir, "run.sh"), "w") as f:
        f.write(f". {initramfs.GUEST_OUT}/env.sh\ncd {shlex.quote(cwd)} || exit 125\n"
                f"exec {' '.join(shlex.quote(a) for a in argv)}\n")
    cmd = qemu_command(spec, image, initrd, run_dir, accel)
    sink = sink or (lambda data: None)
    start = time.monotonic()
    boot_seconds: float | None = None
    timed_out = ""
    with open(os.path.join(run_dir, "qemu.err"), "wb") as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    start_new_session=True)
        except OSError as exc:
            raise VmError(f"cannot start {qemu}: {exc.strerror}") from None
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            for _key, _ in sel.select(0.25):
                data = proc.stdout.read(65536)
                if data:
                    sink(data)
            now = time.monotonic() - start
            if boot_seconds is None and _read(run_dir, "stage").strip() in ("run", "done"):
                boot_seconds = now
            if proc.poll() is not None:
                rest = proc.stdout.read()
                if rest:
                    sink(rest)
                break
            if boot_seconds is None and now > spec.boot_timeout:
                timed_out = f"the kernel did not reach the command within {spec.boot_timeout:g} s"
                break
            if now > spec.timeout:
                timed_out = f"the run exceeded its timeout of {spec.timeout:g} s"
                break
    finally:
        _kill(proc)
    seconds = time.monotonic() - start
    stage = _read(run_dir, "stage").strip()
    status_text = _read(run_dir, "status").strip()
    result = VmResult(
        status=int(status_text) if status_text.lstrip("-").isdigit() else None,
        stage=stage, kvm=_read(run_dir, "kvm").strip(), rootfs=_read(run_dir, "rootfs").strip(), accel=accel,
        release=image.release, boot_seconds=boot_seconds, seconds=seconds, run_dir=run_dir,
        console=_read(run_dir, "console.log"), dmesg=_read(run_dir, "dmesg"), insmod_log=_read(run_dir, "insmod.log"),
        cpu_flags=_read(run_dir, "cpuflags").strip(),
    )
    qemu_err = _read(run_dir, "qemu.err").strip()
    if timed_out and boot_seconds is None:
        raise VmError(_boot_failure(result, timed_out, qemu_err))
    if result.status is None:
        why = timed_out or f"QEMU exited ({proc.returncode}) before the command finished"
        if boot_seconds is None:
            raise VmError(_boot_failure(result, why, qemu_err))
        result.notes.append(f"{why}; console and logs kept in {run_dir}")
    if result.status == 0 and not spec.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        result.run_dir = None
    return result


def _boot_failure(result: VmResult, why: str, qemu_err: str) -> str:
    where = STAGES.get(result.stage, result.stage)
    lines = [f"kernel {result.release} ({result.accel}): {why}; last stage: {where}."]
    if qemu_err:
        lines.append(f"QEMU said: {qemu_err.splitlines()[-1]}")
    tail = [ln for ln in result.console.splitlines() if ln.strip()][-15:]
    if tail:
        lines.append("console (last lines):")
        lines += [f"  {ln}" for ln in tail]
    lines.append(f"console and logs kept in {result.run_dir}")
    return "\n".join(lines)
