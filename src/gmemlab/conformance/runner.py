"""Run conformance cases on a backend, or on two and compare what they observed (DESIGN data flow).

Each case runs against a fresh backend instance so no state leaks between cases. With two backends the
observation logs are compared call by call; every differing call is a :class:`Divergence`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..backend import Backend
from ..errors import HostSigbus, HostSigsegv, KvmError, UnsupportedByBackend, VcpuExit
from .case import Case, CaseFailed, CaseSkipped, Ctx
from .cases import cases_for
from .record import Observation, Recorder

BackendFactory = Callable[[str], Backend]


@dataclass
class CaseResult:
    name: str
    section: str
    backend: str
    profile: str
    status: str  # pass | fail | skip
    detail: str = ""
    seconds: float = 0.0
    observations: list[Observation] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "section": self.section,
            "backend": self.backend,
            "profile": self.profile,
            "status": self.status,
            "detail": self.detail,
        }


@dataclass
class Divergence:
    case: str
    profile: str
    index: int
    model: str
    kernel: str

    def as_json(self) -> dict[str, Any]:
        return {"case": self.case, "profile": self.profile, "call": self.index, "model": self.model,
                "kernel": self.kernel}


def run_case(case: Case, factory: BackendFactory, backend_name: str, profile: str) -> CaseResult:
    start = time.perf_counter()
    result = CaseResult(case.name, case.section, backend_name, profile, "pass")
    recorder = Recorder()
    try:
        backend = factory(profile)
    except UnsupportedByBackend as exc:
        result.status, result.detail = "skip", f"backend unavailable: {exc.what}"
        return result
    try:
        ctx = Ctx(recorder.wrap(backend, "kvm"), recorder, profile)
        case.func(ctx)
        check = getattr(backend, "check_invariants", None)
        if check is not None:
            check()  # the model's invariants hold after every case (an AssertionError fails it)
    except CaseSkipped as exc:
        result.status, result.detail = "skip", str(exc)
    except UnsupportedByBackend as exc:
        result.status, result.detail = "skip", f"{backend_name} backend lacks {exc.what}"
    except CaseFailed as exc:
        result.status, result.detail = "fail", str(exc)
    except AssertionError as exc:
        result.status, result.detail = "fail", f"invariant violated: {exc}"
    except (KvmError, HostSigbus, HostSigsegv, VcpuExit) as exc:
        result.status, result.detail = "fail", f"unexpected: {exc}"
    except Exception as exc:  # a bug in a case or a backend: report it, keep running the others
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result.status = "fail"
        result.detail = f"crash: {type(exc).__name__}: {exc} ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
    finally:
        try:
            backend.close()
        except Exception as exc:  # pragma: no cover - closing must never hide the case's own outcome
            result.detail += f" (close failed: {exc})"
    result.observations = recorder.log
    result.seconds = time.perf_counter() - start
    return result


def run_suite(
    profiles: Iterable[str], backends: dict[str, BackendFactory], pattern: str | None = None,
    progress: Callable[[CaseResult], None] | None = None,
) -> tuple[list[CaseResult], list[Divergence]]:
    results: list[CaseResult] = []
    divergences: list[Divergence] = []
    for profile in profiles:
        for case in cases_for(profile, pattern):
            per_backend = {}
            for name, factory in backends.items():
                res = run_case(case, factory, name, profile)
                per_backend[name] = res
                results.append(res)
                if progress:
                    progress(res)
            if len(per_backend) == 2:
                divergences += compare(*per_backend.values())
    return results, divergences


def compare(model: CaseResult, kernel: CaseResult) -> list[Divergence]:
    """Call-by-call comparison of two runs of one case; skipped runs are not compared."""
    if "skip" in (model.status, kernel.status):
        return []
    out = []
    a, b = model.observations, kernel.observations
    for i in range(max(len(a), len(b))):
        left = str(a[i]) if i < len(a) else "(no call: the case stopped)"
        right = str(b[i]) if i < len(b) else "(no call: the case stopped)"
        if left != right:
            out.append(Divergence(model.name, model.profile, i, left, right))
            if i >= len(a) or i >= len(b) or a[i].method != b[i].method:
                break  # the runs have drifted apart; later calls would only repeat this
    if not out and model.status != kernel.status:
        out.append(Divergence(model.name, model.profile, len(a), f"{model.status}: {model.detail}",
                              f"{kernel.status}: {kernel.detail}"))
    return out


@dataclass
class Gap:
    """A case one backend ran while the other skipped it: a coverage gap, not an agreement."""

    case: str
    profile: str
    skipped: str  # the backend that skipped
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"case": self.case, "profile": self.profile, "skipped": self.skipped, "reason": self.reason}


def coverage_gaps(results: list[CaseResult]) -> list[Gap]:
    """Cases of a two-backend run where exactly one backend skipped."""
    by_case: dict[tuple[str, str], list[CaseResult]] = {}
    for r in results:
        by_case.setdefault((r.name, r.profile), []).append(r)
    gaps = []
    for (name, profile), runs in by_case.items():
        skipped = [r for r in runs if r.status == "skip"]
        if len(runs) == 2 and len(skipped) == 1:
            gaps.append(Gap(name, profile, skipped[0].backend, skipped[0].detail))
    return gaps


def summary(results: list[CaseResult]) -> dict[str, int]:
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for r in results:
        counts[r.status] += 1
    return counts
