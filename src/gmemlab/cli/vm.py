"""``gmemlab vm``: boot a kernel image under QEMU and run a command inside it (issue 15).

``conformance --kernel`` and ``fuzz --kernel`` use :func:`run_gmemlab_in_vm` to run themselves inside the
booted kernel, where both backends meet that kernel: its ``/dev/kvm``, and the model configured from its
host facts.
"""

from __future__ import annotations

import os
import shutil
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .common import positive_seconds


class Accel(StrEnum):
    auto = "auto"
    kvm = "kvm"
    tcg = "tcg"

KERNEL_HELP = "kernel image (bzImage) to boot under QEMU; its modules are taken from beside it when packaged"


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def run_in_vm_cli(kernel: Path, argv: list[str], *, modules: Path | None = None, memory: int = 2048,
                  cpus: int = 1, numa_nodes: int = 2, accel: str = "auto", timeout: float = 1800.0,
                  boot_timeout: float = 180.0, append: str = "", keep: bool = False,
                  collect: dict[str, Path] | None = None) -> int:
    """Run ``argv`` in ``kernel``; returns the exit status (3 when it never finished). ``collect`` names files
    the command may leave in ``$GMEMLAB_VM_OUT`` and where to copy them on this machine afterwards."""
    from ..qemu import VmSpec, run_in_vm

    if not 256 <= memory <= 1 << 20 or not 1 <= cpus <= 256 or not 1 <= numa_nodes <= 64:
        raise UsageError(f"--memory {memory}, --cpus {cpus}, --numa-nodes {numa_nodes}: --memory must be 256 to "
                         "1048576 (MiB), --cpus 1 to 256, --numa-nodes 1 to 64")
    timeout = positive_seconds(timeout, "--timeout")
    boot_timeout = positive_seconds(boot_timeout, "--boot-timeout")
    if accel not in ("auto", "kvm", "tcg"):
        raise UsageError(f"--accel {accel!r} is not one of auto, kvm, tcg")
    collect = collect or {}
    spec_keep = keep
    keep = keep or bool(collect)  # the results share must outlive the run until the files are copied
    spec = VmSpec(str(kernel), str(modules) if modules else None, memory, cpus, numa_nodes, accel, timeout,
                  boot_timeout, append, keep)
    color = sys.stdout.isatty()
    env = {} if color else {"NO_COLOR": "1", "PY_COLORS": "0", "TERM": "dumb"}
    result = run_in_vm(spec, argv, sink=_write, env=env)

    def say(text: str) -> None:
        print(f"gmemlab vm: {text}", file=sys.stderr)

    if result.kvm == "missing":
        say(f"no /dev/kvm in kernel {result.release} (CPU flags seen by the guest: {result.cpu_flags or 'none'}); "
            "a lab kernel needs CONFIG_KVM and CONFIG_KVM_AMD (or their modules beside the image)")
        if result.insmod_log.strip():
            say("module loading said: " + result.insmod_log.strip().splitlines()[-1])
    if result.tsc_khz == 0:
        say("the guest's TSC frequency is 0: every KVM_RUN inside would spin (pass --append tsc_early_khz=...)")
    for note in result.notes:
        say(note)
    for name, dest in collect.items():
        produced = os.path.join(result.run_dir, name) if result.run_dir else ""
        if produced and os.path.isfile(produced):
            try:
                shutil.copyfile(produced, dest)
            except OSError as exc:
                say(f"could not copy {name} to {dest}: {exc.strerror} (it stays in {result.run_dir})")
    if collect and result.status == 0 and result.run_dir and not spec_keep:
        shutil.rmtree(result.run_dir, ignore_errors=True)
        result_dir = None
    else:
        result_dir = result.run_dir
    boot = f"{result.boot_seconds:.1f} s to the command, " if result.boot_seconds is not None else ""
    say(f"kernel {result.release} ({result.accel}, root {result.rootfs or '?'}): {boot}{result.seconds:.1f} s in "
        f"all, exit status {result.status}" + (f"; logs kept in {result_dir}" if result_dir else ""))
    return 3 if result.status is None else result.status


def run_gmemlab_in_vm(kernel: Path, args: list[str], collect: dict[str, Path] | None = None,
                      timeout: float = 1800.0) -> int:
    """Run ``gmemlab ARGS`` (this installation, this working directory) inside ``kernel``."""
    return run_in_vm_cli(kernel, [sys.executable, "-m", "gmemlab", *args], collect=collect, timeout=timeout)


def register(app: typer.Typer) -> None:
    @app.command(name="vm", context_settings={"allow_interspersed_args": False})
    def vm_command(
        command: Annotated[list[str], typer.Argument(help="command to run inside the guest (after --)")],
        kernel: Annotated[Path, typer.Option(envvar="GMEMLAB_KERNEL", help=KERNEL_HELP)],
        modules: Annotated[Path | None, typer.Option(help="modules directory (.../lib/modules/RELEASE)")] = None,
        memory: Annotated[int, typer.Option(help="guest memory in MiB")] = 2048,
        cpus: Annotated[int, typer.Option(help="guest vCPUs")] = 1,
        numa_nodes: Annotated[int, typer.Option(help="guest NUMA nodes (memory split evenly)")] = 2,
        accel: Annotated[Accel, typer.Option(help="auto (KVM if the guest could use it, else TCG), kvm or tcg")] =
        Accel.auto,
        timeout: Annotated[float, typer.Option(help="seconds for the whole run")] = 1800.0,
        boot_timeout: Annotated[float, typer.Option(help="seconds until the command starts")] = 180.0,
        append: Annotated[str, typer.Option(help="extra kernel command line")] = "",
        keep: Annotated[bool, typer.Option(help="keep the run directory (console, dmesg) after a clean run")] = False,
    ) -> None:
        """Boot KERNEL under QEMU with this machine's / (read-only, overlaid) and run COMMAND inside.

        The command runs as root in the current directory with this Python environment; its output streams
        here and its exit status is gmemlab's (the one exception to gmemlab's exit status convention: it is
        COMMAND's; 3 when it never finished, e.g. a timeout). Inside, $GMEMLAB_VM_OUT is a directory shared back to this
        machine (kept with --keep)."""
        if not command:
            raise UsageError("no command: gmemlab vm --kernel IMAGE -- CMD [ARGS...]")
        check_kernel_file(kernel)
        raise typer.Exit(run_in_vm_cli(kernel, command, modules=modules, memory=memory, cpus=cpus,
                                       numa_nodes=numa_nodes, accel=str(accel), timeout=timeout,
                                       boot_timeout=boot_timeout, append=append, keep=keep))


    @app.command(name="debian-kernel")
    def debian_kernel(
        cached: Annotated[bool, typer.Option(help="only look in the cache, never fetch")] = False,
    ) -> None:
        """Print the path of Debian's packaged kernel (trixie-backports linux-image-amd64), fetching and
        unpacking it with apt into ~/.cache/gmemlab on first use. For: gmemlab vm --kernel "$(gmemlab
        debian-kernel)" -- ..."""
        from ..qemu import debian

        path = debian.cached_kernel() if cached else debian.fetch()
        if path is None:
            raise UsageError(f"no packaged kernel in {debian.cache_dir()} (run without --cached to fetch it)")
        print(path)


def check_kernel_file(value: Path) -> None:
    if not value.is_file():
        what = "is a folder" if value.is_dir() else "is not a regular file" if value.exists() else "no such file"
        raise UsageError(f"--kernel {value}: {what} (expected a kernel image such as arch/x86/boot/bzImage)")


def kernel_arg(value: Path | None) -> Path | None:
    if value is not None:
        check_kernel_file(value)
    if value is not None and os.environ.get("GMEMLAB_VM"):
        raise UsageError("--kernel inside a gmemlab VM: already running in a booted kernel")
    return value
