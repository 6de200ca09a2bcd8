"""Helpers for the sweep tests: small sweep files of fast runs (1 GiB guests, a few ms to 0.1 s each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The fastest runs the simulator has: a non-CoCo guest under the deferred policy (~10 ms at 1 GiB).
FAST = """
name = "{name}"
seeds = {seeds}
[fixed]
scenario = "non-coco-mmap-64g"
policy = "deferred"
set.guest_mem = "1GiB"
"""


@pytest.fixture
def sweep_file(tmp_path: Path):
    """Write sweep TOML text to a file and return its path."""

    def write(text: str, name: str = "study.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The gmemlab entry point in a subprocess (exit status and the one-line errors come from main())."""
    code = "import sys; from gmemlab.cli import main; sys.argv = ['gmemlab', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})
