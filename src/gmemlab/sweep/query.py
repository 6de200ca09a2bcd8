"""DuckDB over a results folder: SQL on the runs, column lookup, an overview.

:func:`connect` opens an in-memory DuckDB with two views over the folder's Parquet files (columns united by
name): ``all_runs``, every row ever written, and ``runs``, one row per input hash (a successful run before a
failed one, then the newest), which is what queries normally want. Column names hold dots
(``"metrics.splits.1G"``): quote them in SQL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from ..errors import UsageError
from .dataset import Dataset, sql_string

NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
           "FLOAT", "DOUBLE", "DECIMAL", "REAL")
# Inputs that name a run's configuration: a plot point must not mix runs that differ in one of them.
INPUT_COLUMNS = ("scenario", "policy", "profile", "cost_table.hash")
INPUT_PREFIXES = ("set.", "cost.")


def connect(root: str | Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``all_runs`` and ``runs`` over the dataset in ``root``."""
    path = Path(root)
    if not path.is_dir():
        raise UsageError(f"{root}: no such results folder")
    parts = Dataset(path).parts()
    if not parts:
        raise UsageError(f"{root}: no results here (no part-*.parquet files; run `gmemlab sweep ... --out {root}`)")
    con = duckdb.connect()
    files = "[" + ", ".join(sql_string(str(p)) for p in parts) + "]"
    try:
        con.execute(f"CREATE VIEW all_runs AS SELECT * FROM read_parquet({files}, union_by_name = true)")
    except duckdb.Error as exc:
        raise UsageError(f"{root}: cannot read the Parquet files: {exc}") from None
    con.execute("CREATE VIEW runs AS SELECT * FROM all_runs QUALIFY row_number() OVER "
                "(PARTITION BY input_hash ORDER BY (status = 'ok') DESC, finished_at DESC) = 1")
    return con


@dataclass(frozen=True)
class Result:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


def sql(root: str | Path, query: str) -> Result:
    """Run ``query`` (it may use ``runs`` and ``all_runs``); a DuckDB error is a one-line UsageError."""
    con = connect(root)
    try:
        rel = con.sql(query)
        if rel is None:
            raise UsageError("--sql: the statement returns no rows; write a SELECT")
        return Result(list(rel.columns), [str(t) for t in rel.types], rel.fetchall())
    except duckdb.Error as exc:
        raise UsageError(f"--sql: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def columns(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Column name -> DuckDB type of the ``runs`` view."""
    return {name: str(typ) for name, typ, *_ in con.execute("DESCRIBE runs").fetchall()}


def is_numeric(typ: str) -> bool:
    return typ.split("(")[0] in NUMERIC


def resolve(name: str, known: Sequence[str], option: str) -> str:
    """A column by its full name, or by a unique tail of it: ``guest_mem`` -> ``params.guest_mem``,
    ``splits_1G`` -> ``metrics.splits.1G`` (``.`` and ``_`` match each other). Ties prefer ``params.`` then
    ``metrics.``."""
    if name in known:
        return name
    want = name.replace(".", "_")
    hits = [c for c in known if c.replace(".", "_").endswith("_" + want) or c.replace(".", "_") == want]
    for prefix in ("params.", "metrics."):
        preferred = [c for c in hits if c.startswith(prefix)]
        if len(preferred) == 1:
            return preferred[0]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UsageError(f"{option} {name}: matches {len(hits)} columns: {', '.join(hits[:8])}; give the full name")
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise UsageError(f"{option} {name}: no such column{hint}; list them with --sql \"DESCRIBE runs\"")


def quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def overview(root: str | Path) -> dict[str, Any]:
    """Counts per sweep and status, files, bytes, and the column groups: what ``gmemlab results DIR`` shows."""
    con = connect(root)
    try:
        cols = columns(con)
        by_sweep = con.execute("SELECT sweep, count(*), count(*) FILTER (status = 'ok'), "
                               "count(*) FILTER (status <> 'ok'), median(wall_s) FROM runs GROUP BY sweep "
                               "ORDER BY sweep").fetchall()
        total, written = con.execute("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM all_runs)"
                                     ).fetchone() or (0, 0)
        errors = con.execute("SELECT error, count(*) AS n FROM runs WHERE status <> 'ok' GROUP BY error "
                             "ORDER BY n DESC LIMIT 5").fetchall()
    finally:
        con.close()
    ds = Dataset(root)
    groups: dict[str, int] = {}
    for name in cols:
        head = name.split(".")[0] if "." in name else "(inputs and run)"
        groups[head] = groups.get(head, 0) + 1
    size = ds.size_bytes()
    return {
        "folder": str(root),
        "runs": total,
        "rows_written": written,
        "files": len(ds.parts()),
        "bytes": size,
        "bytes_per_run": size / total if total else None,
        "columns": len(cols),
        "column_groups": groups,
        "sweeps": [{"sweep": s, "runs": n, "ok": ok, "failed": bad, "median_wall_s": med}
                   for s, n, ok, bad, med in by_sweep],
        "top_errors": [{"error": e, "runs": n} for e, n in errors],
    }


def plain(value: Any) -> Any:
    """A DuckDB value as JSON can hold it (timestamps as ISO text, decimals as floats, NaN as null)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value
