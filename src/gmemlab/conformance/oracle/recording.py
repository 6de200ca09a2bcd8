"""The recording: realkernel-private.md's tables read back as ``row id -> {column: cell}``.

The file lives beside the project (``../shared/spec/realkernel-private.md`` in CI) and is never copied into
it: the oracle's tests and ``gmemlab oracle --record`` read it where it is. Cells are normalised only where the
recording formats something the model does not produce (a wall time appended after an em dash).
"""

from __future__ import annotations

import re
from pathlib import Path

COLUMNS = ("A", "B", "B0", "Bv")
NOT_RUN = "—"  # the row was not run on that kernel

_ROW = re.compile(r"^\| `([^`]+)` \|")
_TIME = re.compile(r" — \d+(\.\d+)? s$")


ENV = "GMEMLAB_REALKERNEL_PRIVATE"


def default_path() -> Path | None:
    """``$GMEMLAB_REALKERNEL_PRIVATE``, else ``../shared/spec/realkernel-private.md`` beside the project (or the
    current directory), if present."""
    import os

    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    here = Path(__file__).resolve()
    for base in (*here.parents, Path.cwd(), *Path.cwd().parents):
        candidate = base.parent / "shared" / "spec" / "realkernel-private.md"
        if candidate.is_file():
            return candidate
    return None


def _cells(line: str) -> list[str]:
    # split on unescaped pipes; "\|" inside a cell is a literal pipe
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def normalise(cell: str) -> str:
    """A recorded cell as the oracle renders it: the appended wall time of a row is dropped (timings are out
    of the model's scope; the outcome before it is kept)."""
    return _TIME.sub("", cell.strip())


def parse(text: str) -> dict[str, dict[str, str]]:
    """Every table row with a row id: ``{id: {"op": operation, "A": cell, "B": ..., "B0": ..., "Bv": ...}}``."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if not m:
            continue
        cells = _cells("|" + line[m.end():])  # the id may hold a pipe inside its backticks
        if len(cells) != 1 + len(COLUMNS):
            raise ValueError(f"row {m.group(1)!r}: expected {2 + len(COLUMNS)} cells, got {len(cells) + 1}")
        row = {"op": cells[0]}
        row.update(zip(COLUMNS, cells[1:], strict=True))
        out[m.group(1)] = row
    return out


def load(path: Path | str) -> dict[str, dict[str, str]]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the recording {path}: {exc.strerror}") from None
    rows = parse(text)
    if not rows:
        raise ValueError(f"{path}: no table rows with a row id (is it realkernel-private.md?)")
    return rows
