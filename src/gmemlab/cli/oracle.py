"""``gmemlab oracle``: reproduce the recorded private-memory kernels (realkernel-private.md) row by row."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ..conformance.oracle import COLUMNS, OUT_OF_SCOPE, PENDING, Column, Verdict, column_of, compare, reproduce
from ..conformance.oracle.probe import Probe
from ..conformance.oracle.recording import default_path, load
from ..errors import UnsupportedByBackend, UsageError
from ..model import HostConfig, ModelBackend
from .common import Col, ExitCode, choices, did_you_mean, fit_table, styled
from .vm import KERNEL_HELP, kernel_arg, run_gmemlab_in_vm

BAD = ("differs", "missing", "extra")


if TYPE_CHECKING:
    ColumnChoice = str
else:  # an enum at run time: typer shows, completes and checks the choices
    ColumnChoice = choices("ColumnChoice", COLUMNS)


class Where(StrEnum):
    model = "model"
    kernel = "kernel"


def model_factory(column: Column) -> Callable[[], ModelBackend]:
    """Fresh models of a recorded kernel: its profile, configured from its host facts."""
    config = HostConfig.from_facts(column.facts)
    return lambda: ModelBackend(column.profile, config)


def _kernel_column(requested: list[str]) -> tuple[str, Any, int]:
    from ..kernel import open_kernel_backend

    try:
        probe = open_kernel_backend()
    except UnsupportedByBackend as exc:
        raise UsageError(f"--backend kernel: {exc.what}") from None
    try:
        mode = Probe(probe).mode()
        found = column_of(probe.profile.name, mode)
        base = probe.guest_gpa_window()[0]
        reason = f"{probe.profile.name}, mode {mode} ({probe.profile_reason})"
    finally:
        probe.close()
    if requested and requested != [found]:
        if len(requested) != 1:
            raise UsageError("--backend kernel compares one column: the kernel's own")
        found = requested[0]
    if found is None:
        raise UsageError(f"this kernel is none of the recorded kernels A, B, B0, Bv: {reason}; name one with "
                         "--column to compare anyway")
    return found, open_kernel_backend, base


def register(app: typer.Typer) -> None:
    @app.command()
    def oracle(
        column: Annotated[list[ColumnChoice] | None, typer.Option(help="a recorded kernel (repeatable; default all, "
                                                                  "or the kernel's own with --backend kernel)")]
        = None,
        backend: Annotated[Where, typer.Option(help="reproduce on the model or on the running kernel")] = Where.model,
        record: Annotated[Path | None, typer.Option(help="realkernel-private.md (default: ../shared/spec beside "
                                                         "the project, or $GMEMLAB_REALKERNEL_PRIVATE)")] = None,
        select: Annotated[str | None, typer.Option("-k", help="only rows whose id contains this")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable verdicts")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list reproduced rows too")] = False,
        kernel: Annotated[Path | None, typer.Option(help=f"run inside this kernel: {KERNEL_HELP}")] = None,
    ) -> None:
        """Re-enact the recording probe of realkernel-private.md and compare every row id with the recorded cell.

        Columns: A = 6.18.2 (SW_PROTECTED, per-VM attributes); B = 7.1.5 + in-place v8;
        B0 = B with kvm.gmem_in_place_conversion=0; Bv = B with per-VM attributes.
        Rows outside the model's scope are listed with the reason.
        Exit status: 0 every row in scope reproduced; 1 a row differs (or is missing or extra); 2 bad input."""
        requested = [str(c) for c in column or []]
        vm_kernel = kernel_arg(kernel)
        if vm_kernel is not None:
            args = ["oracle", "--backend", backend.value, *[f"--column={c}" for c in requested]]
            args += ["--json"] * as_json + ["--verbose"] * verbose + (["-k", select] if select else [])
            args += [f"--record={record}"] if record else []
            raise typer.Exit(run_gmemlab_in_vm(vm_kernel, args))
        path = record or default_path()
        try:
            recorded = load(path) if path is not None else None
        except UnicodeDecodeError as exc:
            raise UsageError(f"--record {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        produced: dict[str, dict[str, str]] = {}
        if backend == Where.kernel:
            col, factory, base = _kernel_column(requested)
            produced[col] = reproduce(COLUMNS[col], factory, base)
        else:
            for col in requested or list(COLUMNS):
                produced[col] = reproduce(COLUMNS[col], model_factory(COLUMNS[col]))
        if recorded is None:
            rows = [{"row": r, "column": c, "produced": v} for c, cells in produced.items() for r, v in cells.items()
                    if not select or select in r]
            if select and not rows:
                raise UsageError(f"-k {select!r}: no row id contains it")
            print(json.dumps(rows, indent=2) if as_json else "\n".join(f"{x['column']:3} {x['row']}: "
                                                                         f"{x['produced']}" for x in rows))
            print("(no recording found: pass --record PATH to compare)")
            return
        every = compare(recorded, produced)
        verdicts = [v for v in every if not select or select in v.row]
        if select and not verdicts:
            close = did_you_mean(select, sorted({v.row for v in every}))
            raise UsageError(f"-k {select!r}: no row id contains it{close}")
        if as_json:
            print(json.dumps([v.__dict__ for v in verdicts], indent=2))
        else:
            _table(verdicts, verbose, backend.value)
        raise typer.Exit(ExitCode.FAILED if any(v.status in BAD for v in verdicts) else ExitCode.OK)


def _table(verdicts: list[Verdict], verbose: bool, where: str) -> None:
    console = Console(highlight=False)
    style = {"reproduced": "green", "differs": "bold red", "missing": "bold red", "extra": "bold red",
             "out of scope": "yellow", "pending": "cyan"}
    rows = []
    for v in verdicts:
        if v.status == "reproduced" and not verbose:
            continue
        detail = v.reason if v.status in ("out of scope", "pending") else (v.produced or "(nothing)")
        rows.append((v.row, v.column, styled(v.status, style[v.status]), v.recorded, detail))
    console.print(fit_table([Col("row", "id"), Col("col", "id"), Col("status", "id"), Col("recorded"),
                             Col(f"{where} / reason", ratio=2)], rows,
                            title=f"realkernel-private.md reproduced on the {where}"))
    counts = Counter(v.status for v in verdicts)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
                  f"  (rows listed out of scope: {len(OUT_OF_SCOPE)}, pending: {len(PENDING)})", markup=False)
