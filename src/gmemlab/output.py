"""Output files (plots, saved sequences, reports): checked before any work, written atomically after it.

* :func:`check_output` runs before anything is computed: an empty name, a folder, a missing or unwritable
  folder, or an extension that names no format the command writes is a one-line
  :class:`~gmemlab.errors.UsageError` naming the option and the file.
* :func:`atomic_write` writes a temporary file beside the target and renames it over the target only once the
  whole content is written and flushed to disk: a full disk, a crash or Ctrl-C leaves the previous file as it
  was (byte for byte) and no half-written file under the target's name. A symbolic link stays a link (the file
  it points to is replaced); a device, pipe or terminal (``--out /dev/stdout``) is written in place, never
  replaced by a regular file.
* :func:`save_figure` is the matplotlib case: the format follows the extension (``.png``, ``.svg``, ``.pdf``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import UsageError

# Formats matplotlib writes without extra dependencies, by file extension.
PLOT_FORMATS = ("png", "svg", "pdf")


def check_output(path: str | os.PathLike[str], option: str, formats: Collection[str] | None = None) -> tuple[Path, str]:
    """``(target, format)`` for an output file named by ``option`` (``--plot``), or a UsageError.

    ``formats`` are the extensions (without the dot) the command can write; the format is the extension,
    lower-cased. ``None`` accepts any extension (the format is then ``""`` or the extension)."""
    text = os.fspath(path)
    if not text.strip():
        raise UsageError(f"{option} {text!r}: an empty file name; name the file to write")
    target = Path(text)
    if target.is_dir():
        raise UsageError(f"{option} {text}: is a directory")
    if _special(target):  # /dev/stdout, a pipe: written in place (atomic_file), nothing else to check
        if not os.access(target, os.W_OK):
            raise UsageError(f"{option} {text}: not writable")
        return target, target.suffix.lower().lstrip(".")
    ext = target.suffix.lower().lstrip(".")
    if formats is not None and ext not in formats:
        names = [f".{f}" for f in formats]
        known = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        got = f"extension .{ext}" if ext else "no extension"
        raise UsageError(f"{option} {text}: {got}; the extension picks the format: {known}")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {text}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {text}: folder {str(parent)!r} is not writable")
    try:  # what access() cannot tell (root, /proc, a full or read-only file system): try a file there
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{option} {text}: cannot write in folder {str(parent)!r}: {exc.strerror or exc}") from None
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"{option} {text}: the file is not writable")
    return target, ext


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", option: str = "") -> Iterator[IO[Any]]:
    """A file object for the content of ``path``; on a clean exit it replaces ``path`` whole (fsync, rename),
    on any exception the target is untouched and the temporary file removed.

    An existing target's permission bits are kept. ``OSError`` while writing (a full disk) becomes a UsageError
    naming ``option`` and the file when ``option`` is given."""
    target = Path(path)
    if _special(target):
        # A device, a pipe or a terminal (--out /dev/stdout): there is no file to replace; renaming over it would
        # put a regular file in place of the device node. Written in place.
        try:
            with open(target, mode, encoding=None if "b" in mode else "utf-8") as f:
                yield f
        except OSError as exc:
            raise _failed(option, target, exc) from None
        return
    # A symbolic link stays a link: the file it points to is replaced.
    target = Path(os.path.realpath(target)) if target.is_symlink() else target
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _failed(option, target, exc) from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as exc:
        raise _failed(option, target, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _special(target: Path) -> bool:
    """An existing path (after symbolic links) that is neither a regular file nor a folder."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _failed(option: str, target: Path, exc: OSError) -> Exception:
    if not option:
        return exc
    return UsageError(f"{option} {target}: not written: {exc.strerror or exc}; an existing file is unchanged")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], data: str | bytes, option: str = "") -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "wb", option) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def save_figure(fig: Any, path: str | os.PathLike[str], option: str = "--plot", dpi: int = 100,
                **kwargs: Any) -> Path:
    """Save a matplotlib figure in the format its extension names, atomically; returns the path."""
    target, fmt = check_output(path, option, PLOT_FORMATS)
    with atomic_file(target, "wb", option) as f:
        fig.savefig(f, format=fmt, dpi=dpi, **kwargs)
    return target


def write_with(path: str | os.PathLike[str], write: Callable[[IO[Any]], None], option: str = "",
               mode: str = "w") -> None:
    """Call ``write(file)`` on a temporary file that replaces ``path`` when ``write`` returns."""
    with atomic_file(path, mode, option) as f:
        write(f)
