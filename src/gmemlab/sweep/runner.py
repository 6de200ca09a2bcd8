"""Run tasks on an executor: skip what the dataset holds, batch small runs, write each finished batch.

:func:`run_tasks` is the one loop every many-run command uses (``gmemlab sweep``; ``sensitivity`` can pass its
own tasks and ``collect=True`` to get the rows back without a dataset)::

    tasks = [make_task(ScenarioRef("tdx-boot-64g"), "eager", "", seed) for seed in range(10)]
    with LocalExecutor(2) as ex:    # or DaskExecutor(...)
        outcome = run_tasks(tasks, ex, dataset=None, collect=True)
    outcome.rows                   # one dict per run: inputs, flattened result, status, error, wall_s

Batching: one run is one task, but runs are grouped so a batch takes about ``batch_seconds`` of work, from the
mean wall time of the runs of the same configuration seen so far (else the median of all runs; a run of unknown
cost goes alone). Near the end batches shrink so every worker has work. At most ``inflight`` batches per worker
are queued at once, so estimates keep improving and an interrupted sweep has little to throw away.

Ctrl-C (SIGINT) or SIGTERM stops the sweep: nothing new is submitted, the running batches are abandoned, and
every run finished so far is already in the dataset. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from .. import __version__
from .dataset import Dataset
from .executors import Executor, WorkerLost
from .tasks import Job, Task

MAX_ATTEMPTS = 2  # a run whose worker died twice while it ran alone is recorded as failed


@dataclass
class Stats:
    """Progress of one :func:`run_tasks` call (what the progress bar shows)."""

    total: int  # runs to do in this call (after skipping)
    skipped: int = 0  # already in the dataset
    duplicates: int = 0  # tasks whose inputs equal an earlier task's: run once
    done: int = 0
    failed: int = 0
    batches: int = 0
    files: int = 0
    run_seconds: float = 0.0  # sum of the runs' own wall times
    write_seconds: float = 0.0  # time spent writing Parquet files
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class Outcome:
    stats: Stats
    rows: list[dict[str, Any]]
    interrupted: bool = False


class Batcher:
    """Groups queued jobs into batches of about ``target_s`` seconds of estimated work."""

    def __init__(self, jobs: Iterable[Job], target_s: float) -> None:
        self.queue: deque[Job] = deque(jobs)
        self.target_s = target_s
        self._by_config: dict[str, tuple[float, int]] = {}
        self._recent: deque[float] = deque(maxlen=256)
        self._median: float | None = None
        self.alone: set[str] = set()  # jobs that go in a batch of their own (retries after a lost worker)

    def observe(self, job: Job, wall_s: float) -> None:
        total, n = self._by_config.get(job.config, (0.0, 0))
        self._by_config[job.config] = (total + wall_s, n + 1)
        self._recent.append(wall_s)
        self._median = None

    def estimate(self, job: Job) -> float | None:
        if job.config in self._by_config:
            total, n = self._by_config[job.config]
            return total / n
        if self._recent:
            if self._median is None:
                self._median = statistics.median(self._recent)
            return self._median
        return None

    def next(self, workers: int) -> list[Job]:
        cap = max(1, len(self.queue) // (2 * max(1, workers)))
        batch: list[Job] = []
        work = 0.0
        while self.queue and len(batch) < cap:
            if self.queue[0].input_hash in self.alone:
                if not batch:
                    batch.append(self.queue.popleft())
                break
            est = self.estimate(self.queue[0])
            if est is None:
                if not batch:
                    batch.append(self.queue.popleft())
                break
            if batch and work + est > self.target_s:
                break
            batch.append(self.queue.popleft())
            work += est
        return batch

    def requeue(self, jobs: Sequence[Job]) -> None:
        """Put ``jobs`` back at the front, each to run in a batch of its own."""
        self.alone.update(job.input_hash for job in jobs)
        self.queue.extendleft(reversed(jobs))


def merge(inputs: Mapping[str, Any], output: Mapping[str, Any]) -> dict[str, Any]:
    """A row: the task's inputs, then the run's output; an output column that names an input but disagrees
    with it (the simulator's effective policy, say) is kept beside it as ``result.<name>``."""
    row = dict(inputs)
    for key, value in output.items():
        if key not in row:
            row[key] = value
        elif row[key] != value:
            row[f"result.{key}"] = value
    return row


def _lost_output(job: Job, reason: str) -> dict[str, Any]:
    return {"input_hash": job.input_hash, "status": "error", "error": f"WorkerLost: {reason}", "error_trace": None,
            "wall_s": None, "cpu_s": None, "finished_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "worker": None, "gmemlab_version": __version__}


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks (so no write is cut in half); a second SIGINT raises."""

    def __init__(self) -> None:
        self.set = False
        self._saved: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def run_tasks(tasks: Sequence[Task], executor: Executor, *, dataset: Dataset | None = None,
              retry_failed: bool = False, collect: bool = False, on_progress: Callable[[Stats], None] | None = None,
              batch_seconds: float = 0.5, inflight: int = 2, started: bool = False) -> Outcome:
    """Run ``tasks`` on ``executor`` (started here unless ``started``), writing rows to ``dataset`` as each
    batch finishes and skipping input hashes it already holds (failed runs too, unless ``retry_failed``).
    ``collect`` also returns the rows. Returns the counts and whether the sweep was interrupted."""
    present = dataset.present(ok_only=retry_failed) if dataset is not None else set()
    by_hash: dict[str, Task] = {}
    stats = Stats(total=0)
    for task in tasks:
        if task.input_hash in present:
            stats.skipped += 1
        elif task.input_hash in by_hash:
            stats.duplicates += 1
        else:
            by_hash[task.input_hash] = task
    stats.total = len(by_hash)
    outcome = Outcome(stats, [])
    if on_progress:
        on_progress(stats)
    if not by_hash:
        stats.finished = time.perf_counter()
        if started:
            executor.stop()
        return outcome
    batcher = Batcher((t.job for t in by_hash.values()), batch_seconds)
    attempts: dict[str, int] = {}
    pending: dict[Any, list[Job]] = {}
    if not started:
        executor.start()
    aborted = True
    try:
        with _StopFlag() as stop:
            while (batcher.queue or pending) and not stop.set:
                workers = executor.capacity()
                while batcher.queue and len(pending) < inflight * workers:
                    quarantined = batcher.queue[0].input_hash in batcher.alone
                    if quarantined and pending:
                        break  # a run that was with a dead worker runs with nothing beside it
                    batch = batcher.next(workers)
                    pending[executor.submit(batch)] = batch
                    if quarantined:
                        break
                done = executor.wait(set(pending), timeout=0.25)
                rows: list[dict[str, Any]] = []
                for future in done:
                    batch = pending.pop(future)
                    try:
                        outputs = executor.outcome(future)
                    except WorkerLost as exc:
                        outputs = _retry_or_fail(batch, str(exc), batcher, attempts)
                    for output in outputs:
                        task = by_hash[output["input_hash"]]
                        if output.get("wall_s") is not None and output["status"] == "ok":
                            batcher.observe(task.job, output["wall_s"])
                            stats.run_seconds += output["wall_s"]
                        rows.append(merge(task.inputs, output))
                    stats.batches += 1
                if rows:
                    if dataset is not None:
                        t0 = time.perf_counter()
                        dataset.write(rows)
                        stats.write_seconds += time.perf_counter() - t0
                        stats.files += 1
                    if collect:
                        outcome.rows.extend(rows)
                    stats.done += len(rows)
                    stats.failed += sum(row["status"] != "ok" for row in rows)
                    if on_progress:
                        on_progress(stats)
            outcome.interrupted = stop.set
        aborted = outcome.interrupted
    finally:
        stats.finished = time.perf_counter()
        executor.stop(abort=aborted)
    return outcome


def _retry_or_fail(batch: list[Job], reason: str, batcher: Batcher,
                   attempts: dict[str, int]) -> list[dict[str, Any]]:
    """A batch lost with its worker: its runs go back to run one at a time with nothing beside them (a dead
    local worker fails every batch in flight, so only a run lost while alone is a culprit); a run lost alone
    ``MAX_ATTEMPTS`` times is a failed row."""
    if len(batch) == 1 and batch[0].input_hash in batcher.alone:
        job = batch[0]
        attempts[job.input_hash] = attempts.get(job.input_hash, 0) + 1
        if attempts[job.input_hash] >= MAX_ATTEMPTS:
            return [_lost_output(job, reason)]
    batcher.requeue(batch)
    return []
