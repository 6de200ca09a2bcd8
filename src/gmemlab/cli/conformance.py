"""``gmemlab conformance``: placeholder replaced below in this session."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
