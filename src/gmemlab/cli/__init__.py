"""The ``gmemlab`` command: a thin layer over the library (the top layer; nothing imports it).

Each sub-command lives in its own module exposing ``register(app)``. Errors gmemlab raises on purpose
(bad arguments, bad scenario files) are printed as one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from ..errors import GmemlabError, UsageError

# Modules that add commands; each defines register(app: typer.Typer) -> None.
COMMAND_MODULES = [
    "gmemlab.cli.conformance",
    "gmemlab.cli.fuzz",
    "gmemlab.cli.oracle",
    "gmemlab.cli.profiles",
    "gmemlab.cli.races",
    "gmemlab.cli.scenarios",
    "gmemlab.cli.sim",
    "gmemlab.cli.vm",
    "gmemlab.cli.sweep",
    "gmemlab.cli.results",
]

app = typer.Typer(
    name="gmemlab",
    help="A lab for KVM guest_memfd: model, real-kernel backend, simulator, race checker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """A lab for KVM guest_memfd: model, real-kernel backend, simulator, race checker."""
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
        importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    try:
        app()
    except GmemlabError as exc:
        print(f"gmemlab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("gmemlab: interrupted", file=sys.stderr)
        sys.exit(130)
