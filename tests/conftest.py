"""Shared fixtures."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from gmemlab.model import ModelBackend

# CI (which runs with CI=true) replays a fixed set of examples, so a landing never hinges on a lucky draw;
# local runs keep drawing new examples and may find new counterexamples.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(params=["linux-6.18", "rfc-v2"])
def profile(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def model618() -> ModelBackend:
    return ModelBackend("linux-6.18")


@pytest.fixture
def rfc() -> ModelBackend:
    return ModelBackend("rfc-v2")
