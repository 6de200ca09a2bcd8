"""``gmemlab conformance``: run the spec section 3 cases on the model, the kernel, or both."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..backend import Backend
from ..conformance import CaseResult, Divergence, run_suite, summary
from ..conformance.runner import BackendFactory
from ..errors import UnsupportedByBackend, UsageError
from ..uapi import PROFILES
from .vm import KERNEL_HELP, kernel_arg, run_gmemlab_in_vm


class BackendChoice(StrEnum):
    model = "model"
    kernel = "kernel"
    both = "both"


def _kernel_factory() -> BackendFactory:
    from ..kernel import open_kernel_backend
    from ..uapi import Cap

    def factory(profile: str) -> Backend:
        backend = open_kernel_backend()
        if profile == backend.profile.name:
            return backend
        # The running kernel is one profile (read from it); the other profiles' cases skip, naming what was
        # measured.
        try:
            measured = f"this kernel is {backend.profile.name} ({backend.profile_reason})"
            if profile == "rfc-v2":
                value = backend.check_extension(Cap.GMEM_CONVERSION)
                measured = f"KVM_CAP_GMEM_CONVERSION ({int(Cap.GMEM_CONVERSION)}) = {value}; {measured}"
        finally:
            backend.close()
        raise UnsupportedByBackend(f"{profile} cases need a {profile} kernel: {measured}")

    return factory


# Module parameters --param may set on the model, and the HostConfig field each one sets.
MODEL_PARAMS = {"kvm.gmem_in_place_conversion": "gmem_in_place_conversion"}


def parse_params(items: list[str]) -> dict[str, bool]:
    """``NAME=Y|N`` module parameters for the model; a clear error for anything else."""
    out: dict[str, bool] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in MODEL_PARAMS:
            raise UsageError(f"--param {item!r}: expected NAME=Y|N with NAME one of {', '.join(MODEL_PARAMS)}")
        if value.upper() not in ("Y", "N", "1", "0"):
            raise UsageError(f"--param {item!r}: the value must be Y or N")
        out[MODEL_PARAMS[name]] = value.upper() in ("Y", "1")
    return out


def _model_factory(like_kernel: bool, params: dict[str, bool] | None = None) -> BackendFactory:
    from ..model import HostConfig, ModelBackend

    config = HostConfig.upstream()
    if like_kernel:
        from ..kernel import open_kernel_backend

        probe = open_kernel_backend()
        try:
            config = HostConfig.from_backend(probe)
        finally:
            probe.close()
    elif "gmem_in_place_conversion" not in (params or {}):
        # linux-7.4 is run for its point, in-place conversion; --param kvm.gmem_in_place_conversion=N for the
        # other value (the default itself is unverified, linux-7.md 1.1).
        config = config.with_(gmem_in_place_conversion=True)
    config = config.with_(**(params or {}))

    def factory(profile: str) -> Backend:  # typed: the type checker holds ModelBackend to the interface
        return ModelBackend(profile, config)

    return factory


def backends_for(choice: str, params: dict[str, bool] | None = None) -> dict[str, BackendFactory]:
    if choice == "model":
        return {"model": _model_factory(False, params)}
    if params:
        raise UsageError("--param sets the model's module parameters; with a kernel, the kernel's values are used")
    if choice == "kernel":
        return {"kernel": _kernel_factory()}
    try:
        model = _model_factory(True)
    except UnsupportedByBackend as exc:
        raise UsageError(f"--backend both needs the kernel backend: {exc.what}") from None
    return {"model": model, "kernel": _kernel_factory()}


def _status_style(status: str) -> str:
    return {"pass": "green", "fail": "bold red", "skip": "yellow"}[status]


def print_table(console: Console, results: list[CaseResult], divergences: list[Divergence], verbose: bool) -> None:
    table = Table(title="guest_memfd conformance", show_lines=False)
    for col in ("case", "§", "backend", "profile", "status", "detail"):
        table.add_column(col, overflow="fold")
    for r in results:
        if r.status == "pass" and not verbose:
            detail = ""
        else:
            detail = r.detail
        table.add_row(r.name, r.section, r.backend, r.profile,
                      f"[{_status_style(r.status)}]{r.status}[/]", detail)
    console.print(table)
    if divergences:
        div = Table(title="divergences (model vs kernel)", show_lines=True)
        for col in ("case", "profile", "call", "model", "kernel"):
            div.add_column(col, overflow="fold")
        for d in divergences:
            div.add_row(d.case, d.profile, str(d.index), d.model, d.kernel)
        console.print(div)
    counts = summary(results)
    console.print(
        f"[green]{counts['pass']} passed[/], [red]{counts['fail']} failed[/], "
        f"[yellow]{counts['skip']} skipped[/]" + (f", [bold red]{len(divergences)} divergences[/]" if
                                                   divergences else "")
    )


def print_ktap(results: list[CaseResult], divergences: list[Divergence]) -> None:
    print("KTAP version 1")
    print(f"1..{len(results)}")
    diverged = {(d.case, d.profile) for d in divergences}
    for i, r in enumerate(results, 1):
        name = f"{r.name}.{r.backend}.{r.profile}"
        if r.status == "skip":
            print(f"ok {i} {name} # SKIP {r.detail}")
        elif r.status == "pass" and (r.name, r.profile) not in diverged:
            print(f"ok {i} {name}")
        else:
            print(f"not ok {i} {name}")
            reason = r.detail or "diverges from the other backend"
            print(f"# {reason}")
    counts = summary(results)
    print(f"# Totals: pass:{counts['pass']} fail:{counts['fail']} xfail:0 xpass:0 skip:{counts['skip']} error:0")


def register(app: typer.Typer) -> None:
    @app.command()
    def conformance(
        backend: Annotated[BackendChoice, typer.Option(help="where to run the cases")] = BackendChoice.model,
        profile: Annotated[str, typer.Option(help="a profile (gmemlab profiles lists them) or all")] = "all",
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable results")] = False,
        tap: Annotated[bool, typer.Option("--tap", help="KTAP output, as the kernel selftests print")] = False,
        select: Annotated[str | None, typer.Option("-k", help="only cases whose name contains this")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="details for passing cases too")] = False,
        kernel: Annotated[Path | None, typer.Option(help=f"run inside this kernel: {KERNEL_HELP}")] = None,
        param: Annotated[list[str] | None, typer.Option(
            "--param", help="a module parameter of the modelled kernel, e.g. kvm.gmem_in_place_conversion=N "
                            "(model backend only; linux-7.4 runs with it on by default)")] = None,
    ) -> None:
        """Run the guest_memfd selftest checklist (spec section 3); non-zero exit on failure or divergence.

        With --kernel IMAGE the cases run inside IMAGE booted under QEMU: the kernel backend is its /dev/kvm
        and the model is configured from its host facts."""
        if profile == "all":
            profiles = list(PROFILES)
        elif profile in PROFILES:
            profiles = [profile]
        else:
            raise UsageError(f"--profile {profile!r} is not one of: {', '.join([*PROFILES, 'all'])}")
        if as_json and tap:
            raise UsageError("--json and --tap are exclusive")
        params = parse_params(param or [])
        vm_kernel = kernel_arg(kernel)
        if vm_kernel is not None:
            args = ["conformance", "--backend", backend.value, "--profile", profile]
            args += ["--json"] * as_json + ["--tap"] * tap + ["--verbose"] * verbose
            args += ["-k", select] if select else []
            args += [f"--param={p}" for p in param or []]
            raise typer.Exit(run_gmemlab_in_vm(vm_kernel, args))
        results, divergences = run_suite(profiles, backends_for(backend.value, params), select)
        if not results:
            raise UsageError(f"no case matches -k {select!r}")
        if as_json:
            out: dict[str, Any] = {"cases": [r.as_json() for r in results], "summary": summary(results)}
            if backend == BackendChoice.both:
                out["divergences"] = [d.as_json() for d in divergences]
            print(json.dumps(out, indent=2))
        elif tap:
            print_ktap(results, divergences)
        else:
            print_table(Console(), results, divergences, verbose)
        failed = summary(results)["fail"] or divergences
        raise typer.Exit(1 if failed else 0)
