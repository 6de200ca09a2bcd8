"""Shared fixtures."""

from __future__ import annotations

import pytest

from gmemlab.model import ModelBackend


@pytest.fixture(params=["linux-6.18", "rfc-v2"])
def profile(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def model618() -> ModelBackend:
    return ModelBackend("linux-6.18")


@pytest.fixture
def rfc() -> ModelBackend:
    return ModelBackend("rfc-v2")
