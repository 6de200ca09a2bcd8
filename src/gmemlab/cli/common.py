"""What every ``gmemlab`` command shares: exit status, the one error style, internal errors, rich output.

**Exit status** (:class:`ExitCode`, the same for every command, shown by ``gmemlab --help`` and the README):

* 0 success: the command did what was asked, and a check found nothing wrong;
* 1 the check found a failure: a divergence, a property violated, a failed case, a finding;
* 2 bad usage or input: an unknown option or name, a bad value, a bad file (one line naming it);
* 3 incomplete: a bounded search (``--max-states``, ``--preemptions``, random schedules), a time limit,
  nothing ran, or interrupted (Ctrl-C); what was found so far is printed;
* 4 internal error: a bug in gmemlab. One line on stderr, the full traceback saved to a file it names.

**Errors** are one line on stderr, ``gmemlab: error: <what>: <why>``, for gmemlab's own checks
(:class:`~gmemlab.errors.UsageError`) and for the command-line parser's (typer/click) alike; never a box, never
a traceback. :class:`GmemlabGroup` is the root command class that enforces this, so the console script and
an in-process ``CliRunner().invoke(app, ...)`` behave the same.

**Rich output**: any text that did not come from gmemlab's own source (scenario names, file paths, cost-row
bases, case details) goes through :func:`esc` before it is part of markup; tables come from
:func:`fit_table` so they fit the terminal (80 columns readable; identifiers are never split mid-word).
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from .. import __version__
from ..checks import check_number
from ..errors import GmemlabError, UsageError


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    INCOMPLETE = 3
    INTERNAL = 4


EXIT_STATUS_HELP = (
    "Exit status: 0 success; 1 the check found a failure (divergence, violation, failed case); 2 bad usage or "
    "input; 3 incomplete (bounded search, time limit, nothing ran, interrupted); 4 internal error (a bug: one "
    "line, the traceback saved to a file)."
)


def versioned(result: dict[str, Any]) -> dict[str, Any]:
    """A JSON result object with the version of gmemlab that produced it first (issue 13 item 7)."""
    return {"gmemlab_version": __version__, **result}


def error_line(message: str) -> str:
    """The one error style: ``gmemlab: error: ...`` on one line (newlines in a message are folded)."""
    text = " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())
    return f"gmemlab: error: {text}"


def fail(message: str) -> NoReturn:
    """Print the error line and exit 2 (bad usage or input)."""
    print(error_line(message), file=sys.stderr)
    raise typer.Exit(ExitCode.USAGE)


def crash_dir() -> Path:
    """Where tracebacks of internal errors go: ``$GMEMLAB_CRASH_DIR``, ``$GMEMLAB_VM_OUT`` (inside ``gmemlab
    vm``, shared back to the host), or the temporary folder."""
    return Path(os.environ.get("GMEMLAB_CRASH_DIR") or os.environ.get("GMEMLAB_VM_OUT") or tempfile.gettempdir())


def internal_error(exc: BaseException, what: str = "gmemlab") -> int:
    """One line on stderr naming the exception and the file holding its traceback; returns exit status 4."""
    path = crash_dir() / f"gmemlab-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    text = (f"gmemlab {__version__}: internal error in {what}\nargv: {sys.argv!r}\npython: {sys.version}\n\n"
            + "".join(traceback.format_exception(exc)))
    try:
        path.write_text(text)
        saved = f"the traceback is saved in {path}"
    except OSError as err:
        saved = f"could not save the traceback to {path} ({err.strerror})"
    summary = " ".join(str(exc).split())[:300]
    print(f"gmemlab: internal error in {what} (a bug in gmemlab, please report it): {type(exc).__name__}"
          f"{': ' + summary if summary else ''}; {saved}", file=sys.stderr)
    return ExitCode.INTERNAL


def did_you_mean(value: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or ``""``."""
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, value: str, known: Sequence[str], option: str = "") -> UsageError:
    """``--profile 'linux-9': unknown profile (did you mean 'linux-6.18'?); known: ...``."""
    where = f"{option} {value!r}: " if option else f"{value!r}: "
    return UsageError(f"{where}unknown {kind}{did_you_mean(value, known)}; known: {', '.join(known)}")


def choices(name: str, values: Iterable[str]) -> type[enum.StrEnum]:
    """A string enum of ``values`` so typer shows them as choices, completes them and refuses others."""
    return enum.StrEnum(name, {v: v for v in values})  # type: ignore[return-value]


def positive_seconds(value: float, option: str) -> float:
    """A time limit: a finite number of seconds > 0 (``nan``/``inf`` parse as floats and are refused here)."""
    try:
        check_number(value)
    except ValueError as exc:
        raise UsageError(f"{option} {value:g}: {exc}") from None
    if value <= 0:
        raise UsageError(f"{option} {value:g}: must be more than 0 seconds")
    return value


def rss_text() -> str:
    """This process's resident memory now (Linux /proc), else its peak (getrusage), as ``612 MiB``."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        nbytes = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        nbytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    from ..workload.units import format_bytes

    return format_bytes(nbytes)


# --- the root command: one error style, exit status --------------------------------------------------------

_CHOICE_RE = re.compile(r"^(?:Value error, )?'(?P<value>.*)' is not one of (?P<choices>.*?)\.?$", re.S)


def _given(args: Sequence[str], option: str) -> str | None:
    """The value given for ``option`` on the command line (``--x V`` or ``--x=V``), if it can be found."""
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg[len(option) + 1:]
    return None


_SQL_RE = re.compile(r"\s*(select|with|describe|show|summarize|from|pivot)\b", re.IGNORECASE)


def _click_message(exc: typer.TyperException, args: Sequence[str] = ()) -> str:
    """A typer/click usage error as one line, with did-you-mean for a mistyped choice."""
    try:
        from typer._click import exceptions as cx  # typer >= 0.26 vendors click
    except ImportError:  # pragma: no cover - older typer on click
        from click import exceptions as cx  # type: ignore[no-redef]

    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "gmemlab"
    if isinstance(exc, cx.BadParameter) and not isinstance(exc, cx.MissingParameter):
        param = exc.param
        hint = exc.param_hint or (param.opts[0] if param is not None and getattr(param, "opts", None) else None)
        if isinstance(hint, list | tuple):
            hint = " / ".join(hint)
        if param is not None and getattr(param, "param_type_name", "") == "argument":
            hint = str(getattr(param, "name", None) or hint).upper()
        message = exc.message.removeprefix("Value error, ")
        match = _CHOICE_RE.match(message)
        if match:
            known = re.findall(r"'([^']*)'", match["choices"])
            message = (f"{match['value']!r} is not one of: {', '.join(known)}"
                       f"{did_you_mean(match['value'], known)}")
        else:
            message = message[:1].lower() + message[1:]
            opts = [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())] if param is not None else []
            given = next((v for o in opts or ([str(hint)] if hint else []) if (v := _given(args, o)) is not None),
                         None)
            if given is not None:
                message = f"{given!r}: {message}"
        text = f"{hint} {message}" if hint else message
    else:
        text = exc.format_message()
        text = text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
        if where.endswith(" results") and text.startswith("got unexpected extra argument"):
            # `gmemlab results DIR "SELECT ..."`: the query is an option, not a second argument
            extra = text.rpartition(" (")[2].rstrip(")")
            if _SQL_RE.match(extra):
                text += "; a query goes after --sql: gmemlab results DIR --sql \"SELECT ...\""
    help_hint = f" (see '{where} --help')" if ctx is not None else ""
    return f"{text.rstrip('.')}{help_hint}"


def reflow(doc: str) -> str:
    """A docstring's hard-wrapped lines joined into the sentences they belong to: typer's rich help keeps every
    line break of the source and then wraps again at the terminal width, which left half-empty lines
    ("for the profile the kernel" / "is (the other profiles ..."). A line that ends a sentence (``.``, ``:``)
    still ends its line; blank lines still separate paragraphs."""
    out: list[str] = []
    for line in doc.strip().splitlines():
        text = line.strip()
        if out and text and out[-1] and not out[-1].endswith((".", ":")):
            out[-1] += " " + text
        else:
            out.append(text)
    return "\n".join(out)


class GmemlabGroup(TyperGroup):
    """The root command: maps every outcome to the exit status convention, with one error style; every
    command's help ends with the exit status convention."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not getattr(cmd, "epilog", None):
            cmd.epilog = EXIT_STATUS_HELP
        help_text = getattr(cmd, "help", None)
        if cmd is not None and help_text:
            cmd.help = reflow(help_text)
        return cmd

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        code = run_main(lambda: super(GmemlabGroup, self).main(args=argv, prog_name=prog_name or "gmemlab",
                                                                complete_var=complete_var, standalone_mode=False,
                                                                **extra), argv)
        if standalone_mode:
            sys.exit(code)
        return code


def run_main(call: Any, argv: Sequence[str] = ()) -> int:
    """Run the parsed command, returning the exit status of the convention."""
    columns = os.environ.get("COLUMNS", "")
    if columns.strip().isdigit() and int(columns) == 0:
        del os.environ["COLUMNS"]  # rich would print every table and line at width 0: nothing at all
    try:
        result = call()
        if result == 130:  # typer turns Ctrl-C into Exit(130) and returns it; no command exits 130 itself
            print("gmemlab: interrupted", file=sys.stderr)
            return ExitCode.INCOMPLETE
        return int(result) if isinstance(result, int) else ExitCode.OK
    except typer.Exit as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # typer turns Ctrl-C into Exit(130)
            print("gmemlab: interrupted", file=sys.stderr)
            return ExitCode.INCOMPLETE
        return exc.exit_code
    except typer.Abort:
        print("gmemlab: interrupted", file=sys.stderr)
        return ExitCode.INCOMPLETE
    except typer.TyperException as exc:  # typer/click usage errors (vendored click's ClickException)
        print(error_line(_click_message(exc, argv)), file=sys.stderr)
        return ExitCode.USAGE if getattr(exc, "exit_code", 2) in (1, 2) else exc.exit_code
    except GmemlabError as exc:
        print(error_line(str(exc)), file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print("gmemlab: interrupted", file=sys.stderr)
        return ExitCode.INCOMPLETE
    except (BrokenPipeError, ReaderGone):
        # The reader went away (`gmemlab ... | head`): stop quietly; the output is incomplete.
        _silence_stdout()
        return ExitCode.INCOMPLETE
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else ExitCode.USAGE)
    except Exception as exc:
        return internal_error(exc, _command_name(argv))


class ReaderGone(Exception):
    """stdout's reader closed the pipe while rich was printing (rich would exit 1, the status of a failure)."""


def _rich_broken_pipe(self: Console) -> None:
    raise ReaderGone


Console.on_broken_pipe = _rich_broken_pipe  # type: ignore[method-assign]


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _command_name(argv: Sequence[str]) -> str:
    words = [a for a in argv[:2] if not a.startswith("-")]
    return "gmemlab " + words[0] if words else "gmemlab"


# --- help: show types as a user writes them -----------------------------------------------------------------

_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH", "path": "PATH", "file": "FILE",
               "directory": "FOLDER"}


def _readable_type(label: str | None) -> str | None:
    """``<bool>`` -> nothing (a flag takes no value), ``<list[str]>`` -> ``TEXT`` (repeatable, said by the
    help), ``<model|kernel|both>`` kept: choices are shown as choices."""
    if not label or not label.startswith("<"):
        return label
    inner = label[1:-1] if label.endswith(">") else label[1:]
    repeat = inner.startswith("list[")
    if repeat:
        inner = inner[5:-1]
    if inner == "bool":
        return None
    if "|" in inner:
        shown = f"[{inner}]"
    else:
        shown = _TYPE_NAMES.get(inner, inner.upper())
    return shown + (" ..." if repeat else "")


def readable_help_types() -> None:
    """typer 0.29 prints every parameter's Python type (``<bool>``, ``<list[str]>``); show what a user types."""
    from typer import core

    for cls in (core.TyperOption, core.TyperArgument):
        original = getattr(cls, "display_type_rich", None)
        if original is None or getattr(original, "_gmemlab", False):
            continue

        def display(self: Any, ctx: Any, _original: Any = original) -> str | None:
            if getattr(self, "metavar", None) is not None:
                return str(self.metavar)
            if getattr(self, "is_flag", False) or getattr(self, "is_bool_flag", False):
                return None
            return _readable_type(_original(self, ctx))

        display._gmemlab = True  # type: ignore[attr-defined]
        cls.display_type_rich = display  # type: ignore[method-assign]


def version_callback(value: bool) -> None:
    if value:
        print(f"gmemlab {__version__}")
        raise typer.Exit(ExitCode.OK)


# --- rich output ----------------------------------------------------------------------------------------------


def esc(value: object) -> str:
    """``value`` as text safe inside rich markup (``[/]``, ``[v2]`` print as written)."""
    return escape(str(value))


def console(stderr: bool = False) -> Console:
    """A console for the terminal (its width; 80 columns when not a terminal and $COLUMNS is unset).
    Markup is on (gmemlab's own styles): escape user strings with :func:`esc`; ``highlight`` is off so
    numbers are not recoloured at random."""
    return Console(stderr=stderr, highlight=False)


@dataclass(frozen=True)
class Col:
    """A table column. ``kind``: ``id`` (names: kept whole while the table fits, folded only when the other
    columns would not fit otherwise), ``num`` (right-aligned, never split), ``text`` (wraps at spaces; only a word
    longer than the column folds)."""

    header: str
    kind: str = "text"
    style: str | None = None
    ratio: int = 1  # text columns share the width left in proportion to this
    justify: str = "left"  # of text columns (numbers are right-aligned)


# Narrowest widths before a table gives up columns side by side and prints one block per row (FitTable).
ID_FOLD_MIN = 16  # an identifier longer than this may fold down to this many characters
TEXT_MIN = 10  # a text column wraps down to this many characters (or its header)
TEXT_COMFORT = 30  # text wraps down to this before any identifier folds


def _cell_width(cell: Text) -> int:
    return max((Text(line).cell_len for line in cell.plain.split("\n")), default=0)


def fit_widths(natural: Sequence[int], floors: Sequence[int], kinds: Sequence[str], budget: int) -> list[int] | None:
    """Column widths summing to at most ``budget``: text columns wrap first (widest first) down to a comfortable
    width, then text and long identifiers shrink together, widest first, down to their floors; ``None`` when
    even the floors do not fit. Numbers and short identifiers (statuses, sections) never shrink."""
    widths = list(natural)
    excess = sum(widths) - budget
    stages = ([(i, max(floors[i], min(natural[i], TEXT_COMFORT))) for i, k in enumerate(kinds) if k == "text"],
              [(i, floors[i]) for i, k in enumerate(kinds) if k in ("text", "id")])
    for stage in stages:
        while excess > 0:
            shrinkable = [i for i, floor in stage if widths[i] > floor]
            if not shrinkable:
                break
            i = max(shrinkable, key=lambda j: widths[j])
            widths[i] -= 1
            excess -= 1
    return widths if excess <= 0 else None


class FitTable(Table):
    """A table laid out for the width it is printed at: nothing is ever dropped or cut to nothing.

    Rich squeezes a table wider than the console by shrinking every column evenly, down to nothing (a 63-character
    case name used to push the status column of ``gmemlab conformance`` off an 80-column pipe). Here, when the
    natural widths do not fit, text columns wrap first, then long identifiers fold; headers, numbers and short
    identifiers (statuses) keep their width. When even that cannot fit, each row prints as a block of
    ``header: value`` lines."""

    def __init__(self, columns: Sequence[Col], data: list[list[Text]],
                 row_meta: Sequence[tuple[str | None, bool]] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.kw = kw
        self.cols = list(columns)
        self.data = data
        self.row_meta = list(row_meta) if row_meta is not None else [(None, False)] * len(data)
        self.natural = [max([len(c.header), *(_cell_width(r[i]) for r in data)]) for i, c in enumerate(columns)]
        self.floors: list[int] = []
        for i, c in enumerate(columns):
            if c.kind == "num" or (c.kind == "id" and self.natural[i] <= ID_FOLD_MIN):
                self.floors.append(self.natural[i])
            else:
                least = ID_FOLD_MIN if c.kind == "id" else TEXT_MIN
                self.floors.append(max(len(c.header), min(self.natural[i], least)))

    def overhead(self, ncols: int) -> int:
        """Width a table of ``ncols`` columns spends on padding, dividers and edges."""
        _top, right, _bottom, left = self.padding
        pad = ncols * (left + right) - (0 if self.pad_edge else left + right)
        edges = (2 if self.box and self.show_edge else 0) + (ncols - 1 if self.box else 0)
        return pad + edges

    def __rich_console__(self, console: Console, options: Any) -> Any:
        self._layout(None)
        budget = options.max_width - self.overhead(len(self.cols))
        if sum(self.natural) <= budget:
            yield from super().__rich_console__(console, options)
            return
        widths = fit_widths(self.natural, self.floors, [c.kind for c in self.cols], budget)
        if widths is not None:
            self._layout(widths)
            yield from super().__rich_console__(console, options)
            return
        parts = self._column_groups(options.max_width)
        if parts is None:
            yield from self._blocks(console, options)
            return
        # Too many columns side by side (a comparison of many policies): the first column (what each row is)
        # repeated with as many of the others as fit, part after part.
        for n, group in enumerate(parts):
            kw = dict(self.kw, title=self.title if n == 0 else None,
                      caption=self.caption if n == len(parts) - 1 else None)
            yield FitTable([self.cols[i] for i in group], [[r[i] for i in group] for r in self.data], self.row_meta,
                           **kw)

    def _column_groups(self, max_width: int) -> list[list[int]] | None:
        """The first column with as many following columns as fit beside it at their floors, repeatedly; None
        when the first column and any one other do not fit (or there is only one)."""
        if len(self.cols) < 3:
            return None
        groups: list[list[int]] = []
        group = [0]
        for i in range(1, len(self.cols)):
            if sum(self.floors[j] for j in [*group, i]) + self.overhead(len(group) + 1) <= max_width:
                group.append(i)
                continue
            if len(group) == 1:
                return None
            groups.append(group)
            group = [0, i]
            if sum(self.floors[j] for j in group) + self.overhead(2) > max_width:
                return None
        groups.append(group)
        # As many parts as packing needs, with the columns spread evenly over them (more room for each).
        rest = list(range(1, len(self.cols)))
        size, extra = divmod(len(rest), len(groups))
        even, start = [], 0
        for n in range(len(groups)):
            end = start + size + (1 if n < extra else 0)
            even.append([0, *rest[start:end]])
            start = end
        fits = all(sum(self.floors[j] for j in g) + self.overhead(len(g)) <= max_width for g in even)
        return even if fits else groups

    def _layout(self, widths: list[int] | None) -> None:
        """(Re)build the columns: natural widths (rich's own layout) or the given ones."""
        self.columns = []
        self.rows = []
        if widths is None:
            # Text columns share what the others leave by their ratios (rich applies ratios to expanded tables
            # only); a table whose text is short is not stretched.
            avg = [sum(r[i].cell_len for r in self.data) // max(len(self.data), 1) + 2 for i in range(len(self.cols))]
            self.expand = any(c.kind == "text" for c in self.cols) and sum(avg) > 60
        else:
            self.expand = False
        for i, c in enumerate(self.cols):
            width = None if widths is None else widths[i]
            if c.kind == "num":
                self.add_column(Text(c.header), justify="right", no_wrap=True, style=c.style, width=width)
            elif c.kind == "id" and (width is None or width >= self.natural[i]):
                self.add_column(Text(c.header), no_wrap=True, overflow="fold", style=c.style, min_width=self.natural[i],
                                width=width)
            else:
                self.add_column(Text(c.header), overflow="fold", style=c.style, width=width, justify=c.justify,  # type: ignore[arg-type]
                                ratio=c.ratio if widths is None and c.kind == "text" else None)
        for r, (style, end_section) in zip(self.data, self.row_meta, strict=True):
            self.add_row(*r, style=style, end_section=end_section)

    def _blocks(self, console: Console, options: Any) -> Any:
        """One block per row: a ``header: value`` paragraph per cell (wrapping at any width, so nothing is
        squeezed away), a blank line between rows."""
        if self.title:
            yield Text.from_markup(str(self.title)) if isinstance(self.title, str) else self.title
        for n, r in enumerate(self.data):
            if n:
                yield Text("")
            for c, cell in zip(self.cols, r, strict=True):
                if cell.plain:
                    yield Text.assemble(f"{c.header}: ", cell, overflow="fold")
        if self.caption:
            yield Text.from_markup(str(self.caption)) if isinstance(self.caption, str) else self.caption


def fit_table(columns: Sequence[Col], rows: Iterable[Sequence[object]], title: str | None = None,
              caption: str | None = None, drop_empty: bool = True) -> Table:
    """A compact table (a rule under the header, no outer box) that fits the width it is printed at (80 columns
    readable, nothing dropped: :class:`FitTable`): empty columns are left out, identifiers and numbers keep their
    width while they can and text columns take what is left.

    String cells, the title and the caption are escaped (they may hold user text); a cell that is a
    :class:`rich.text.Text` is kept as it is (gmemlab's own styling)."""
    data = [[Text("") if v is None else v if isinstance(v, Text) else Text(str(v)) for v in row] for row in rows]
    keep = [i for i, _c in enumerate(columns) if not drop_empty or not data or any(r[i].plain for r in data)]
    return FitTable([columns[i] for i in keep], [[r[i] for i in keep] for r in data],
                    title=esc(title) if title else None, caption=esc(caption) if caption else None,
                    box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), title_justify="left",
                    caption_justify="left")


def fitted(table: Table) -> Table:
    """``table`` (a rich Table built elsewhere, e.g. by the simulator's report) as a :class:`FitTable` that
    fits the width it is printed at: same title, caption, box, headers, cells, row styles and sections.
    Right-aligned columns stay right-aligned and wrap at spaces; no-wrap left columns are identifiers."""
    if isinstance(table, FitTable):
        return table
    cols = []
    for c in table.columns:
        header = c.header if isinstance(c.header, str) else getattr(c.header, "plain", str(c.header))
        header = Text.from_markup(header).plain
        kind = "id" if c.no_wrap and c.justify != "right" else "text"
        cols.append(Col(header, kind, c.style if isinstance(c.style, str) else None, c.ratio or 1,
                        "right" if c.justify == "right" else "left"))
    cells = [list(c.cells) for c in table.columns]
    data = [[cell if isinstance(cell, Text) else Text.from_markup(str(cell)) for cell in row]
            for row in zip(*cells, strict=True)] if cells else []
    meta = [(r.style if isinstance(r.style, str) else None, r.end_section) for r in table.rows]
    return FitTable(cols, data, meta, title=table.title, caption=table.caption, box=table.box,
                    show_edge=table.show_edge, pad_edge=table.pad_edge, padding=table.padding,
                    show_lines=table.show_lines, title_justify=table.title_justify,
                    caption_justify=table.caption_justify, header_style=table.header_style)


def styled(text: object, style: str) -> Text:
    """A table cell in one of gmemlab's styles (user text inside stays literal)."""
    return Text(str(text), style=style)
