"""``gmemlab fuzz``: lockstep differential fuzzing of the model against the kernel (or the model against itself).

Exit status (the convention issue 13 makes universal): 0 no finding; 1 the fuzzer found a failure (a
divergence, an exception inside a backend, a broken model invariant, or a coverage gap without
``--allow-gaps``); 2 bad usage or a bad replay file; 3 nothing ran; 4 an internal error of gmemlab itself
(one line on stderr, the traceback saved to a file it names).
"""

from __future__ import annotations

import json
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import __version__
from ..checks import U64_MAX
from ..conformance.fuzz import (
    DEFAULT_EXAMPLES,
    DEFAULT_MAX_OPS,
    FuzzReport,
    dump_sequence,
    fuzz,
    load_sequence,
)
from ..conformance.fuzz_ops import OUT_OF_REACH
from ..conformance.lockstep import Finding, Stats
from ..errors import UnsupportedByBackend, UsageError
from ..output import atomic_write, check_output
from ..uapi import PROFILES
from .common import ExitCode, choices, internal_error, unknown
from .vm import KERNEL_HELP, kernel_arg, run_gmemlab_in_vm

EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_NOTHING_RAN, EXIT_INTERNAL = (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE,
                                                                  ExitCode.INCOMPLETE, ExitCode.INTERNAL)


if TYPE_CHECKING:
    FuzzProfile = str
else:  # an enum at run time: typer shows, completes and checks the choices (did-you-mean from the root)
    FuzzProfile = choices("FuzzProfile", PROFILES)


class FuzzBackend(StrEnum):
    both = "both"
    model = "model"


def _factories(backend: str, profile: str | None = None) -> tuple[Any, Any, str]:
    from ..model import HostConfig, ModelBackend

    if profile is not None and profile not in PROFILES:
        raise unknown("profile", profile, list(PROFILES), "--profile")
    if backend == "model":
        name = profile or "linux-6.18"
        # linux-7.4 is fuzzed for its point, in-place conversion on (the default is unverified, linux-7.md 1.1)
        config = HostConfig.upstream().with_(gmem_in_place_conversion=True if name.startswith("linux-7.4") else None)
        return ((lambda: ModelBackend(name, config)), (lambda: ModelBackend(name, config)),
                f"model vs model (self-check, {name})")
    if backend != "both":
        raise UsageError(f"--backend {backend!r} must be 'both' (model vs kernel) or 'model' (self-check)")
    from ..kernel import open_kernel_backend

    try:
        probe = open_kernel_backend()
    except UnsupportedByBackend as exc:
        raise UsageError(f"--backend both needs /dev/kvm: {exc.what}") from None
    try:
        config = HostConfig.from_backend(probe)
        kernel_profile, why = probe.profile.name, probe.profile_reason
    finally:
        probe.close()
    # The model is the kernel's own profile, read from it (never assumed).
    if profile is not None and profile != kernel_profile:
        raise UsageError(f"--profile {profile}: this kernel is {kernel_profile} ({why})")
    return ((lambda: ModelBackend(kernel_profile, config)), open_kernel_backend,
            f"model ({kernel_profile}) vs kernel")


def _finding_json(f: Finding | None, ops: list[Any]) -> list[dict[str, Any]]:
    return [] if f is None else [{**f.as_json(), "sequence": ops}]


def _stats_json(stats: Stats) -> dict[str, Any]:
    return {"per_op": dict(stats.per_op), "outcomes": dict(stats.outcomes), "not_run": dict(stats.not_run),
            "gaps": dict(stats.gaps)}


def _print_finding(f: Finding, ops: list[Any], names: tuple[str, str]) -> None:
    print(f"{f.kind} at operation {f.step} ({f.op['op']}) of a {len(ops)}-operation sequence: {f.detail}")
    if f.left or f.right:
        print(f"  {names[0]:<6}: {f.left}\n  {names[1]:<6}: {f.right}")
    print("minimal sequence:")
    for i, o in enumerate(ops):
        print(f"  {i:>2} {json.dumps(o)}")


VM_TIMEOUT_BASE = 1800.0  # seconds: gmemlab vm's default
VM_TIMEOUT_PER_EXAMPLE = 4.0  # seconds per sequence of DEFAULT_MAX_OPS operations (3x the measured 1.3 s)


def _save(path: Path, ops: list[Any], f: Finding, **meta: Any) -> str:
    # Inside a VM booted by --kernel the host's files are read-only: the sequence goes to the results share
    # and the host side copies it to ``path`` when the VM has stopped.
    vm_out = os.environ.get("GMEMLAB_VM_OUT")
    target = Path(vm_out) / path.name if vm_out else path
    try:
        atomic_write(target, dump_sequence(ops, f, **meta) + "\n")  # an existing file stays whole until replaced
    except OSError as exc:
        return f"could not save the sequence to {path}: {exc.strerror}"
    return f"saved to {path}; re-run it with: gmemlab fuzz --replay {path}"


def register(app: typer.Typer) -> None:
    @app.command(name="fuzz")
    def fuzz_command(
        backend: Annotated[FuzzBackend, typer.Option(help="both (model vs kernel) or model (self-check)")] =
        FuzzBackend.both,
        examples: Annotated[int, typer.Option(help="sequences to generate", min=1, max=10**9)] = DEFAULT_EXAMPLES,
        seed: Annotated[int, typer.Option(help="random seed (same seed, same sequences)", min=0, max=U64_MAX)] = 0,
        max_ops: Annotated[int, typer.Option(help="operations per sequence", min=1, max=10**6)] = DEFAULT_MAX_OPS,
        replay: Annotated[Path | None, typer.Option(help="re-run one saved sequence instead of fuzzing")] = None,
        save: Annotated[str, typer.Option(help="where a failing sequence is saved (written atomically)")] =
        "fuzz-failure.json",
        allow_gaps: Annotated[bool, typer.Option("--allow-gaps", help="a coverage gap (one side skips an "
                                                 "operation the other runs) ends its sequence instead of failing "
                                                 "the run; gaps are still reported")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
        kernel: Annotated[Path | None, typer.Option(help=f"run inside this kernel: {KERNEL_HELP}")] = None,
        profile: Annotated[FuzzProfile | None, typer.Option(
            help="the model's profile: with --backend model any (default linux-6.18); with both it must be the "
                 "kernel's, which is read from it")] = None,
    ) -> None:
        """Drive the model and the kernel in lockstep with hypothesis-generated operation sequences; any
        differing observation, exception inside a backend, broken model invariant or coverage gap fails, shrunk
        to a minimal sequence that is saved for --replay.

        With --kernel IMAGE the sequences run inside IMAGE booted under QEMU, over every VM type it offers.
        Exit status: 0 nothing found, 1 found, 2 bad usage or replay file, 3 nothing ran, 4 internal error."""
        try:
            code = _command(backend.value, examples, seed, max_ops, replay, save, allow_gaps, as_json, kernel,
                            None if profile is None else str(profile))
        except UsageError as exc:
            print(f"gmemlab: error: {exc}", file=sys.stderr)
            code = EXIT_USAGE
        raise typer.Exit(code)


def _command(backend: str, examples: int, seed: int, max_ops: int, replay: Path | None, save_name: str,
             allow_gaps: bool, as_json: bool, kernel: Path | None, profile: str | None = None) -> int:
    if examples < 1 or max_ops < 1:
        raise UsageError("--examples and --max-ops must be at least 1")
    save = check_output(save_name, "--save")[0]  # before any work: a finding must have somewhere to go
    vm_kernel = kernel_arg(kernel)
    if vm_kernel is not None:
        args = ["fuzz", "--backend", backend, "--examples", str(examples), "--seed", str(seed),
                "--max-ops", str(max_ops)] + ["--json"] * as_json + ["--allow-gaps"] * allow_gaps
        if replay is not None:
            args += ["--replay", str(replay.resolve())]
        args += ["--save", str(save.resolve())] + ([f"--profile={profile}"] if profile else [])
        # Under TCG a sequence of 30 operations took 1.3 s inside the 6.18.2 lab VM (118 sequences in 153 s,
        # load ~5 on 2 cores): the run may take 4 s per example, on top of the default half hour.
        timeout = VM_TIMEOUT_BASE + VM_TIMEOUT_PER_EXAMPLE * examples * max_ops / DEFAULT_MAX_OPS
        return run_gmemlab_in_vm(vm_kernel, args, collect={save.name: save.resolve()}, timeout=timeout)
    ops = None
    if replay is not None:
        try:
            ops = load_sequence(replay.read_text())
        except OSError as exc:
            raise UsageError(f"--replay {replay}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"--replay {replay}: {exc}") from None
    left, right, label = _factories(backend, profile)
    names = ("model", "kernel") if backend == "both" else ("left", "right")
    try:
        if ops is not None:
            return _replay(left, right, ops, label, names, allow_gaps, as_json)
        return _fuzz(left, right, label, names, examples, seed, max_ops, allow_gaps, as_json, save)
    except UsageError:
        raise
    except Exception as exc:
        return internal_error(exc, "gmemlab fuzz")


def _replay(left: Any, right: Any, ops: list[Any], label: str, names: tuple[str, str], allow_gaps: bool,
            as_json: bool) -> int:
    stats = Stats()
    from ..conformance.lockstep import replay

    f = replay(left, right, ops, allow_gaps, stats, names)
    if as_json:
        print(json.dumps({"gmemlab_version": __version__, "backends": label, "sequences": 1,
                          "operations": stats.operations,
                          "findings": _finding_json(f, ops[: f.step + 1] if f else ops)}, indent=2))
    elif f is None:
        print(f"replayed {len(ops)} operations ({label}): no divergence ({stats.operations} ran on both sides)")
    else:
        _print_finding(f, ops[: f.step + 1], names)
    if f is not None:
        return EXIT_FOUND
    return EXIT_NOTHING_RAN if stats.operations == 0 else EXIT_OK


def _fuzz(left: Any, right: Any, label: str, names: tuple[str, str], examples: int, seed: int, max_ops: int,
          allow_gaps: bool, as_json: bool, save: Path) -> int:
    console = Console(stderr=True)
    start = time.monotonic()
    with Progress(TextColumn("[bold]fuzz[/] " + label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=as_json or not sys.stderr.isatty()) as bar:
        task = bar.add_task("fuzz", total=examples)
        report: FuzzReport = fuzz(left, right, examples, seed, max_ops, allow_gaps,
                                  progress=lambda n: bar.update(task, completed=min(n, examples)), names=names)
    seconds = time.monotonic() - start
    f = report.finding
    saved = _save(save, report.ops, f, seed=seed, backends=label) if f is not None else ""
    if as_json:
        print(json.dumps({"gmemlab_version": __version__, "backends": label, "seed": seed,
                          "sequences": report.sequences,
                          "operations": report.operations, "seconds": round(seconds, 1), "flaky": report.flaky,
                          "findings": _finding_json(f, report.ops), "saved": saved,
                          "stats": _stats_json(report.stats), "out_of_reach": OUT_OF_REACH}, indent=2))
    else:
        print(f"{report.sequences} sequences, {report.operations} operations ({label}, seed {seed}) in "
              f"{seconds:.0f} s: {'1 finding' if f else 'no divergence'}")
        if report.stats.not_run:
            print(f"not run on either side: {sum(report.stats.not_run.values())} operations "
                  f"({len(report.stats.not_run)} reasons)")
        if report.stats.gaps:
            print("coverage gaps (one side skipped, the other ran):")
            for what, n in report.stats.gaps.most_common():
                print(f"  {n:>5} {what}")
        if f is not None:
            _print_finding(f, report.ops, names)
            if report.flaky:
                print("(flaky: the finding did not reproduce when hypothesis re-ran it)")
            print(saved)
    if f is not None:
        return EXIT_FOUND
    if report.stats.gaps and not allow_gaps:  # pragma: no cover - a gap is a finding without --allow-gaps
        return EXIT_FOUND
    return EXIT_NOTHING_RAN if report.ran_nothing else EXIT_OK
