"""The conformance suite: spec section 3 cases written once, run on the model and the real kernel."""

from .case import Case, Ctx
from .cases import REGISTRY, cases_for
from .runner import CaseResult, Divergence, Gap, compare, coverage_gaps, run_case, run_suite, summary

__all__ = ["REGISTRY", "Case", "CaseResult", "Ctx", "Divergence", "Gap", "cases_for", "compare", "coverage_gaps",
           "run_case", "run_suite", "summary"]
