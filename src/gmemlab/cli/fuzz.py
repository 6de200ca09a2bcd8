"""``gmemlab fuzz``: differential fuzzing of the model against the kernel (or the model against itself)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..backend import Backend
from ..conformance.fuzz import compare_sequence, fuzz, load_sequence
from ..errors import UnsupportedByBackend, UsageError
from .vm import KERNEL_HELP, kernel_arg, run_gmemlab_in_vm


def _factories(backend: str) -> tuple[Callable[[], Backend], Callable[[], Backend], str]:
    from ..model import HostConfig, ModelBackend

    if backend == "model":
        return (lambda: ModelBackend()), (lambda: ModelBackend()), "model vs model (self-check)"
    if backend != "both":
        raise UsageError(f"--backend {backend!r} must be 'both' (model vs kernel) or 'model' (self-check)")
    from ..kernel import open_kernel_backend

    try:
        probe = open_kernel_backend()
    except UnsupportedByBackend as exc:
        raise UsageError(f"--backend both needs /dev/kvm: {exc.what}") from None
    config = HostConfig.from_backend(probe)
    probe.close()
    return (lambda: ModelBackend("linux-6.18", config)), open_kernel_backend, "model vs kernel"


def register(app: typer.Typer) -> None:
    @app.command(name="fuzz")
    def fuzz_command(
        backend: Annotated[str, typer.Option(help="both (model vs kernel) or model (self-check)")] = "both",
        examples: Annotated[int, typer.Option(help="sequences to generate")] = 200,
        seed: Annotated[int, typer.Option(help="random seed (same seed, same sequences)")] = 0,
        max_ops: Annotated[int, typer.Option(help="operations per sequence at most")] = 25,
        replay: Annotated[Path | None, typer.Option(help="re-run one JSON sequence instead of fuzzing")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
        kernel: Annotated[Path | None, typer.Option(help=f"run inside this kernel: {KERNEL_HELP}")] = None,
    ) -> None:
        """Run random guest_memfd operation sequences on two backends; any differing observation fails.

        With --kernel IMAGE the sequences run inside IMAGE booted under QEMU, over every VM type it offers."""
        if examples < 1 or max_ops < 1:
            raise UsageError("--examples and --max-ops must be at least 1")
        vm_kernel = kernel_arg(kernel)
        if vm_kernel is not None:
            args = ["fuzz", "--backend", backend, "--examples", str(examples), "--seed", str(seed),
                    "--max-ops", str(max_ops)] + ["--json"] * as_json
            if replay is not None:
                args += ["--replay", str(replay.resolve())]
            raise typer.Exit(run_gmemlab_in_vm(vm_kernel, args))
        left, right, label = _factories(backend)
        if replay is not None:
            try:
                ops = load_sequence(replay.read_text())
            except OSError as exc:
                raise UsageError(f"--replay {replay}: {exc.strerror}") from None
            except ValueError as exc:
                raise UsageError(f"--replay {replay}: {exc}") from None
            div = compare_sequence(left, right, ops)
            if as_json:
                print(json.dumps({"sequences": 1, "divergences": [] if div is None else [
                    {"call": div.index, "model": div.left, "other": div.right, "sequence": div.ops}]}))
            elif div is None:
                print(f"replayed {len(ops)} operations ({label}): no divergence")
            else:
                print(f"divergence at call {div.index}:\n  model : {div.left}\n  other : {div.right}")
            raise typer.Exit(1 if div else 0)
        console = Console(stderr=True)
        with Progress(TextColumn("[bold]fuzz[/] " + label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=as_json or not sys.stderr.isatty()) as bar:
            task = bar.add_task("fuzz", total=examples)
            report = fuzz(left, right, examples, seed, max_ops, progress=lambda n: bar.update(task, completed=n))
        div = report.divergence
        if as_json:
            print(json.dumps({
                "backends": label, "seed": seed, "sequences": report.sequences, "operations": report.operations,
                "divergences": [] if div is None else [
                    {"call": div.index, "model": div.left, "other": div.right, "sequence": div.ops}],
            }, indent=2))
        else:
            print(f"{report.sequences} sequences, {report.operations} operations ({label}, seed {seed}): "
                  f"{'1 divergence' if div else 'no divergence'}")
            if div is not None:
                print(f"first differing call #{div.index}:\n  model : {div.left}\n  other : {div.right}")
                print("replay with: gmemlab fuzz --replay FILE, FILE holding:")
                print(div.replayable())
        raise typer.Exit(1 if div else 0)
