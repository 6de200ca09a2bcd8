"""What a worker process runs: a batch of jobs, each through the simulator adapter, never raising.

:func:`run_batch` is the function handed to the executors (local processes or Dask workers; the worker needs
gmemlab installed). A run that raises becomes an output with ``status = "error"``, ``error`` (``Type:
message``) and ``error_trace`` (the traceback's last frames), so one bad run never stops a sweep. Each output
carries the run's wall and CPU time (``wall_s``, ``cpu_s``: the simulator call alone; wall well above CPU
means the machine was busy), where it ran (``worker``) and the
``gmemlab_version`` of the code that ran it.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from . import adapter
from .tasks import Job


def run_job(job: Job) -> dict[str, Any]:
    """One job -> its output columns (flattened result, or the error), with timing and provenance."""
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        result = adapter.run_one(job.scenario, job.policy, job.profile, job.seed, job.overrides, job.costs,
                                 job.costs_label)
        status, error, trace = "ok", None, None
    except Exception as exc:  # a failing run is a row with its error; the sweep goes on
        result = {}
        status, error = "error", f"{type(exc).__name__}: {exc}"
        trace = "".join(traceback.format_exception(exc, limit=-4))
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return {
        "input_hash": job.input_hash,
        "status": status,
        "error": error,
        "error_trace": trace,
        "wall_s": wall,
        "cpu_s": cpu,
        "finished_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "gmemlab_version": __version__,
        **result,
    }


def run_batch(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Run ``jobs`` one after the other; one output per job, in order."""
    return [run_job(job) for job in jobs]
