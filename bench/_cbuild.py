"""Build the C side of a side-by-side benchmark: write the source, compile it with gcc, load it."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path


def build_shared(tmp: Path, name: str, source: str) -> ctypes.CDLL:
    """Compile ``source`` to ``tmp/name.so`` (-O2, position independent) and load it."""
    src, lib = tmp / f"{name}.c", tmp / f"{name}.so"
    src.write_text(source)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return ctypes.CDLL(str(lib))
