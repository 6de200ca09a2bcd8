"""Where batches of runs execute: local worker processes, or a Dask distributed cluster.

* :class:`LocalExecutor` -- ``--workers N`` processes on this machine (``concurrent.futures``, forkserver: the
  workers start from a clean process that has imported the simulator once). Workers ignore SIGINT: Ctrl-C is the
  main process's to handle (it stops, keeps every finished run, and ends the workers).
* :class:`SerialExecutor` -- in this process, for small studies, debugging and tests.
* :class:`DaskExecutor` -- a running Dask scheduler (``--scheduler tcp://HOST:PORT``; its workers need gmemlab
  installed), or a ``LocalCluster`` of ``--workers N`` single-threaded worker processes (``--dask``).

Both take batches (lists of :class:`~gmemlab.sweep.tasks.Job`) and hand back futures; a batch whose worker
died raises :class:`WorkerLost` from :meth:`outcome`, and the runner retries its runs one by one.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import UsageError
from .tasks import Job
from .worker import run_batch

BatchFn = Callable[[Sequence[Job]], list[dict[str, Any]]]


class WorkerLost(Exception):
    """The worker running a batch died (killed, out of memory, crashed interpreter)."""


class Executor(Protocol):
    name: str

    def start(self) -> None: ...
    def capacity(self) -> int: ...
    def submit(self, jobs: list[Job]) -> Any: ...
    def wait(self, futures: set[Any], timeout: float) -> set[Any]: ...
    def outcome(self, future: Any) -> list[dict[str, Any]]: ...
    def stop(self, abort: bool = False) -> None: ...


class SerialExecutor:
    """Batches run in this process, one at a time, when submitted: no start-up cost, and a debugger or a test
    sees the runs (a small ``sensitivity`` study may prefer it). A crash here is the caller's crash."""

    name = "this process"

    def __init__(self, fn: BatchFn = run_batch) -> None:
        self.fn = fn

    def start(self) -> None:
        pass

    def capacity(self) -> int:
        return 1

    def submit(self, jobs: list[Job]) -> cf.Future[list[dict[str, Any]]]:
        future: cf.Future[list[dict[str, Any]]] = cf.Future()
        future.set_result(self.fn(jobs))
        return future

    def wait(self, futures: set[Any], timeout: float) -> set[Any]:
        return {f for f in futures if f.done()}

    def outcome(self, future: cf.Future[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        return future.result()

    def stop(self, abort: bool = False) -> None:
        pass


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalExecutor:
    """``workers`` processes on this machine."""

    def __init__(self, workers: int, fn: BatchFn = run_batch) -> None:
        if workers < 1:
            raise UsageError(f"--workers {workers}: must be at least 1")
        self.workers = workers
        self.fn = fn
        self.name = f"{workers} local worker process{'es' if workers > 1 else ''}"
        self._pool: cf.ProcessPoolExecutor | None = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["gmemlab.sweep.worker"])
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_ignore_sigint)
        # start the workers now (the pool would on the first batches), so start-up is not charged to runs
        cf.wait([self._pool.submit(os.getpid) for _ in range(self.workers)])

    def capacity(self) -> int:
        return self.workers

    def submit(self, jobs: list[Job]) -> cf.Future[list[dict[str, Any]]]:
        assert self._pool is not None, "start() first"
        try:
            return self._pool.submit(self.fn, jobs)
        except cf.BrokenExecutor:  # a worker died earlier: a fresh pool for the rest
            self._terminate()
            self.start()
            return self._pool.submit(self.fn, jobs)

    def wait(self, futures: set[Any], timeout: float) -> set[Any]:
        done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return done

    def outcome(self, future: cf.Future[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        try:
            return future.result()
        except cf.BrokenExecutor as exc:
            raise WorkerLost(f"worker process died ({exc})") from None

    def _terminate(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # concurrent.futures has no public way to stop running work before Python 3.14 (terminate_workers)
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join(timeout=5)

    def stop(self, abort: bool = False) -> None:
        if abort:
            self._terminate()
        elif self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class DaskExecutor:
    """A Dask distributed cluster: ``scheduler`` (an address) or a LocalCluster of ``workers`` processes."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None, fn: BatchFn = run_batch,
                 connect_timeout: float = 10.0) -> None:
        if scheduler is not None and workers is not None:
            raise UsageError("--scheduler and --workers: the cluster's workers are started with `dask worker`; "
                             "give one or the other")
        if scheduler is not None and "://" not in scheduler and ":" not in scheduler:
            raise UsageError(f"--scheduler {scheduler}: expected an address such as tcp://HOST:8786")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers {workers}: must be at least 1")
        self.scheduler = scheduler
        self.workers = workers or multiprocessing.cpu_count()
        self.fn = fn
        self.connect_timeout = connect_timeout
        self.name = f"Dask scheduler {scheduler}" if scheduler else f"Dask LocalCluster of {self.workers} workers"
        self._client: Any = None
        self._cluster: Any = None
        self._capacity = (0, 0.0)

    def start(self) -> None:
        from distributed import Client, LocalCluster

        if self.scheduler:
            try:
                self._client = Client(self.scheduler, timeout=self.connect_timeout)  # type: ignore[no-untyped-call]
            except (OSError, TimeoutError) as exc:
                raise UsageError(f"--scheduler {self.scheduler}: cannot connect: {exc}") from None
            try:
                self._client.wait_for_workers(1, timeout=self.connect_timeout)
            except TimeoutError:
                self.stop()
                raise UsageError(f"--scheduler {self.scheduler}: no worker joined within "
                                 f"{self.connect_timeout:g} s (start some with `dask worker {self.scheduler}`)"
                                 ) from None
        else:
            self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=self.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.ERROR)
            self._client = Client(self._cluster)  # type: ignore[no-untyped-call]

    def capacity(self) -> int:
        """Worker threads in the cluster (asked at most every 2 s: workers may join or leave)."""
        count, when = self._capacity
        if time.monotonic() - when > 2.0:
            count = max(1, sum(self._client.nthreads().values()))
            self._capacity = (count, time.monotonic())
        return count

    def submit(self, jobs: list[Job]) -> Any:
        return self._client.submit(self.fn, jobs, pure=False)

    def wait(self, futures: set[Any], timeout: float) -> set[Any]:
        from distributed import wait

        try:
            done = wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")  # type: ignore[no-untyped-call]
            return set(done.done)
        except TimeoutError:
            return set()

    def outcome(self, future: Any) -> list[dict[str, Any]]:
        from distributed import KilledWorker

        try:
            return list(future.result())
        except KilledWorker as exc:
            raise WorkerLost(f"Dask worker died ({exc})") from None

    def stop(self, abort: bool = False) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            client.close()  # releases its futures: the scheduler drops the queued runs
        if cluster is not None:
            cluster.close()
