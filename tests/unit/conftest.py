"""Fixtures of the unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.metrics_support import Mocks


@pytest.fixture
def mocks(clock: Any) -> Mocks:
    """One mock executor per host row, on the test's clock."""
    return Mocks(clock)
