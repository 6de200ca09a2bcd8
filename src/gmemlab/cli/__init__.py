"""The ``gmemlab`` command: a thin layer over the library (the top layer; nothing imports it).

Each sub-command lives in its own module exposing ``register(app)``. Every command follows
:mod:`gmemlab.cli.common`: one exit status convention (0 success, 1 a failure found, 2 bad usage or input,
3 incomplete, 4 internal error), one error style (``gmemlab: error: ...`` on one line, never a traceback),
user strings escaped before rich renders them, output files written atomically (:mod:`gmemlab.output`).
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from ..errors import UsageError
from .common import EXIT_STATUS_HELP, GmemlabGroup, readable_help_types, version_callback

# Modules that add commands; each defines register(app: typer.Typer) -> None.
COMMAND_MODULES = [
    "gmemlab.cli.conformance",
    "gmemlab.cli.fuzz",
    "gmemlab.cli.oracle",
    "gmemlab.cli.profiles",
    "gmemlab.cli.races",
    "gmemlab.cli.scenarios",
    "gmemlab.cli.sensitivity",
    "gmemlab.cli.sim",
    "gmemlab.cli.validate",
    "gmemlab.cli.vm",
    "gmemlab.cli.sweep",
    "gmemlab.cli.results",
]

HELP = "A lab for KVM guest_memfd: model, real-kernel backend, simulator, race checker.\n\n" + EXIT_STATUS_HELP

app = typer.Typer(
    name="gmemlab",
    cls=GmemlabGroup,
    help=HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["--help", "-h"]},
)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print gmemlab's version and exit.")] = False,
) -> None:
    _check_overrides()


def _check_overrides() -> None:
    """The environment overrides of unverified constants (``gmemlab profiles``) must parse: bad input is a
    one-line error before any command runs."""
    from ..model.profiles import in_place_default
    from ..uapi import cap_guest_memfd_memory_attributes

    try:
        cap_guest_memfd_memory_attributes()
        in_place_default(True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an optional library missing: the other commands still work
            _register_unavailable(name.rpartition(".")[2], exc)
            continue
        module.register(app)


def _register_unavailable(command: str, exc: ModuleNotFoundError) -> None:
    missing = exc.name or str(exc)

    @app.command(command, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                 help=f"(unavailable: needs the Python package {missing!r})")
    def unavailable(ctx: typer.Context) -> None:
        raise UsageError(f"gmemlab {command} needs the Python package {missing!r}, which is not installed "
                         f"(pip install {missing}, or pip install -e '.[dev]')")


readable_help_types()
_register_all()


def main(argv: list[str] | None = None) -> None:
    """The console script: run ``gmemlab ARGV`` and exit with the convention's status."""
    typer.main.get_command(app).main(args=argv if argv is not None else sys.argv[1:], prog_name="gmemlab")
