"""``gmemlab conformance``: run the spec section 3 cases on the model, the kernel, or both."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from .. import __version__
from ..backend import Backend
from ..conformance import CaseResult, Divergence, Gap, coverage_gaps, run_suite, summary
from ..conformance.runner import BackendFactory
from ..errors import UnsupportedByBackend, UsageError
from ..output import atomic_write, check_output
from ..uapi import PROFILES
from .common import Col, ExitCode, choices, did_you_mean, esc, fit_table, styled
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


STATUS_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def kernel_profile() -> str:
    """The profile of the running kernel (read from it by the kernel backend); UsageError without /dev/kvm."""
    from ..kernel import open_kernel_backend

    try:
        backend = open_kernel_backend()
    except UnsupportedByBackend as exc:
        raise UsageError(f"--backend both needs the kernel backend: {exc.what}") from None
    try:
        return backend.profile.name
    finally:
        backend.close()


def print_table(console: Console, results: list[CaseResult], divergences: list[Divergence], verbose: bool,
                gaps: list[Gap] | None = None) -> None:
    """One row per case, the verdict first, then the section, backend and profile (those two only when more
    than one ran: they go in the title otherwise), then the case name with its detail on the lines below it,
    so the verdict reads at any width (80 columns piped) and names fold only when nothing else can give way.
    Divergences and coverage gaps follow in tables of their own."""
    backends = sorted({r.backend for r in results})
    profiles = sorted({r.profile for r in results})
    title = "guest_memfd conformance"
    if len(backends) == 1:
        title += f" on the {backends[0]}"
    if len(profiles) == 1:
        title += f", {profiles[0]}"
    rows = []
    for r in results:
        detail = "" if r.status == "pass" and not verbose else r.detail
        case = Text(r.name)
        if detail:
            case.append("\n" + detail, style="dim")
        rows.append((styled(r.status, STATUS_STYLE[r.status]), r.section, r.backend if len(backends) > 1 else None,
                     r.profile if len(profiles) > 1 else None, case))
    console.print(fit_table([Col("status", "id"), Col("§", "id"), Col("backend", "id"), Col("profile", "id"),
                             Col("case (detail below)")], rows, title=title))
    if divergences:
        console.print(fit_table([Col("case", "id"), Col("profile", "id"), Col("call", "num"), Col("model"),
                                 Col("kernel")],
                                [(d.case, d.profile, d.index, d.model, d.kernel) for d in divergences],
                                title="divergences (model vs kernel)"))
    if gaps:
        console.print(fit_table([Col("case", "id"), Col("profile", "id"), Col("skipped on", "id"), Col("why")],
                                [(g.case, g.profile, g.skipped, g.reason) for g in gaps],
                                title="coverage gaps (one backend skipped a case the other ran)"))
    counts = summary(results)
    console.print(
        f"[green]{counts['pass']} passed[/], [red]{counts['fail']} failed[/], "
        f"[yellow]{counts['skip']} skipped[/]" + (f", [bold red]{len(divergences)} divergences[/]" if
                                                   divergences else "")
        + (f", [bold red]{len(gaps)} coverage gaps[/]" if gaps else "")
    )


def junit_xml(results: list[CaseResult], divergences: list[Divergence], gaps: list[Gap] | None = None) -> bytes:
    """JUnit XML for CI systems: one testsuite per (backend, profile), one testcase per case; a failed case is
    a <failure>, a skipped one <skipped> with its reason, a divergence a <failure> on the kernel's case, a
    coverage gap a <failure> on the side that skipped."""
    import xml.etree.ElementTree as ET

    diverged: dict[tuple[str, str], list[Divergence]] = {}
    for d in divergences:
        diverged.setdefault((d.case, d.profile), []).append(d)
    gapped = {(g.case, g.profile, g.skipped) for g in gaps or []}
    root = ET.Element("testsuites", name="gmemlab conformance")
    suites: dict[tuple[str, str], ET.Element] = {}
    for r in results:
        key = (r.backend, r.profile)
        if key not in suites:
            suites[key] = ET.SubElement(root, "testsuite", name=f"gmemlab.conformance.{r.backend}.{r.profile}")
        case = ET.SubElement(suites[key], "testcase", name=r.name, classname=f"{r.backend}.{r.profile}.{r.section}",
                             time=f"{r.seconds:.6f}")
        if r.status == "fail":
            ET.SubElement(case, "failure", message=r.detail[:200]).text = r.detail
        elif (r.name, r.profile, r.backend) in gapped:
            ET.SubElement(case, "failure", message="coverage gap: the other backend ran it").text = r.detail
        elif r.status == "skip":
            ET.SubElement(case, "skipped", message=r.detail)
        elif r.backend == "kernel" and (r.name, r.profile) in diverged:
            text = "\n".join(f"call {d.index}: model {d.model} / kernel {d.kernel}"
                             for d in diverged[(r.name, r.profile)])
            ET.SubElement(case, "failure", message="diverges from the model").text = text
    for (_backend, _profile), suite in suites.items():
        cases = list(suite)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
        suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
        suite.set("errors", "0")
        suite.set("time", f"{sum(float(c.get('time', '0')) for c in cases):.6f}")
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def print_ktap(results: list[CaseResult], divergences: list[Divergence], gaps: list[Gap] | None = None) -> None:
    print("KTAP version 1")
    print(f"1..{len(results)}")
    diverged = {(d.case, d.profile) for d in divergences}
    gapped = {(g.case, g.profile, g.skipped) for g in gaps or []}
    for i, r in enumerate(results, 1):
        name = f"{r.name}.{r.backend}.{r.profile}"
        if (r.name, r.profile, r.backend) in gapped:
            print(f"not ok {i} {name}")
            print(f"# coverage gap: skipped here ({r.detail}), the other backend ran it")
        elif r.status == "skip":
            print(f"ok {i} {name} # SKIP {r.detail}")
        elif r.status == "pass" and (r.name, r.profile) not in diverged:
            print(f"ok {i} {name}")
        else:
            print(f"not ok {i} {name}")
            reason = r.detail or "diverges from the other backend"
            print(f"# {reason}")
    counts = summary(results)
    print(f"# Totals: pass:{counts['pass']} fail:{counts['fail']} xfail:0 xpass:0 skip:{counts['skip']} error:0")


if TYPE_CHECKING:
    ProfileChoice = str
else:  # an enum at run time: typer shows, completes and checks the choices
    ProfileChoice = choices("ProfileChoice", [*PROFILES, "all"])


def register(app: typer.Typer) -> None:
    @app.command()
    def conformance(
        backend: Annotated[BackendChoice, typer.Option(help="where to run the cases")] = BackendChoice.model,
        profile: Annotated[ProfileChoice, typer.Option(help="a profile (gmemlab profiles describes them) or all")] =
        "all",
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable results")] = False,
        tap: Annotated[bool, typer.Option("--tap", help="KTAP output, as the kernel selftests print")] = False,
        junit: Annotated[Path | None, typer.Option("--junit", help="also write JUnit XML for CI systems to this "
                                                   "file (written atomically once the run is over)",
                                                   show_default=False)] = None,
        select: Annotated[str | None, typer.Option("-k", help="only cases whose name contains this")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="details for passing cases too")] = False,
        kernel: Annotated[Path | None, typer.Option(help=f"run inside this kernel: {KERNEL_HELP}")] = None,
        param: Annotated[list[str] | None, typer.Option(
            "--param", help="a module parameter of the modelled kernel, e.g. kvm.gmem_in_place_conversion=N "
                            "(model backend only; linux-7.4 runs with it on by default)")] = None,
        allow_gaps: Annotated[bool, typer.Option("--allow-gaps", help="report coverage gaps (one backend skipped "
                                                 "a case the other ran) without failing")] = False,
    ) -> None:
        """Run the guest_memfd selftest checklist (spec section 3).

        With --backend both every case runs on the model and on this machine's kernel for the profile the kernel
        is (the other profiles are not compared: listed as such), and every observation must agree; a case one
        backend skips while the other runs it is a coverage gap and fails the run unless --allow-gaps.
        With --kernel IMAGE the cases run inside IMAGE booted under QEMU: the kernel backend is its /dev/kvm and
        the model is configured from its host facts.
        Exit status: 0 every case that ran passed (and agreed, without gaps); 1 a case failed, the backends
        diverged or a coverage gap; 2 bad input; 3 nothing ran (every case skipped); 4 internal error."""
        profile = str(profile)
        profiles = list(PROFILES) if profile == "all" else [profile]
        if as_json and tap:
            raise UsageError("--json and --tap are exclusive")
        if junit is not None:
            check_output(junit, "--junit")
        params = parse_params(param or [])
        vm_kernel = kernel_arg(kernel)
        if vm_kernel is not None:
            args = ["conformance", "--backend", backend.value, "--profile", profile]
            args += ["--json"] * as_json + ["--tap"] * tap + ["--verbose"] * verbose + ["--allow-gaps"] * allow_gaps
            args += ["-k", select] if select else []
            args += [f"--param={p}" for p in param or []]
            args += [f"--junit={junit.resolve()}"] if junit is not None else []
            raise typer.Exit(run_gmemlab_in_vm(vm_kernel, args))
        not_compared: list[str] = []
        if backend == BackendChoice.both:
            running = kernel_profile()
            not_compared = [p for p in profiles if p != running]
            profiles = [p for p in profiles if p == running]
            if not profiles:
                print(f"gmemlab: nothing to compare: the kernel under test is {running}, not "
                      f"{', '.join(not_compared)}", file=sys.stderr)
                raise typer.Exit(ExitCode.INCOMPLETE)
        results, divergences = run_suite(profiles, backends_for(backend.value, params), select)
        if not results:
            if select:
                from ..conformance import REGISTRY

                names = sorted({c.name for c in REGISTRY if any(p in c.profiles for p in profiles)})
                raise UsageError(f"-k {select!r}: no case name contains it{did_you_mean(select, names)}")
            # linux-7.4-v8 is the recorded v8 kernel's variant: realkernel-private.md is its test (gmemlab oracle)
            raise UsageError(f"--profile {profile}: no conformance case is written for it; its recorded kernel's "
                             "rows are checked by 'gmemlab oracle --column B'")
        gaps = coverage_gaps(results) if backend == BackendChoice.both else []
        if as_json:
            out: dict[str, Any] = {"gmemlab_version": __version__, "cases": [r.as_json() for r in results],
                                   "summary": summary(results)}
            if backend == BackendChoice.both:
                out["divergences"] = [d.as_json() for d in divergences]
                out["gaps"] = [g.as_json() for g in gaps]
                out["not_compared"] = not_compared
            print(json.dumps(out, indent=2))
        elif tap:
            print_ktap(results, divergences, [] if allow_gaps else gaps)
        else:
            console = Console(highlight=False)
            print_table(console, results, divergences, verbose, gaps)
            if not_compared:
                console.print(f"not compared (the kernel under test is {esc(profiles[0])}): "
                              f"{esc(', '.join(not_compared))}")
        if junit is not None:
            atomic_write(junit, junit_xml(results, divergences, [] if allow_gaps else gaps), "--junit")
        counts = summary(results)
        if counts["fail"] or divergences or (gaps and not allow_gaps):
            raise typer.Exit(ExitCode.FAILED)
        if counts["pass"] == 0:
            raise typer.Exit(ExitCode.INCOMPLETE)
