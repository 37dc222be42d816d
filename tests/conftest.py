"""Shared fixtures: a fresh executor registry per test, mock hosts, a controllable clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from executors import registry


@pytest.fixture(autouse=True)
def _fresh_executors() -> Iterator[None]:
    """Executors are cached per host pk, and pks are reused after a rollback: start clean."""
    from reconciler import api

    registry.forget()
    api.reset()
    yield
    registry.forget()
    api.reset()


class FakeClock:
    """A clock tests move by hand; shared by the reconciler and the mock executor."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mock_host(db):  # type: ignore[no-untyped-def]
    from container_manager.models import ExecutorHost

    return ExecutorHost.objects.create(name="mock-1", executor_type="mock", max_concurrent_jobs=10)


@pytest.fixture
def mock_executor(mock_host):  # type: ignore[no-untyped-def]
    return mock_host.get_executor()


@pytest.fixture
def mock_world(clock: FakeClock):  # type: ignore[no-untyped-def]
    """A reconciler on mock hosts and the test's clock, driven by the test."""
    from tests.mockworld import MockWorld

    return MockWorld(clock)


#: Fixtures that give a test the database. (Not ``django_db_blocker``: pytest-django's autouse
#: fixtures request it for every test.)
_DB_FIXTURES = {"db", "transactional_db", "django_db_setup", "live_server", "admin_client", "admin_user"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that never touch the database, so the PostgreSQL pass does not repeat them."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if not (fixtures & _DB_FIXTURES) and item.get_closest_marker("django_db") is None:
            item.add_marker(pytest.mark.no_db)


def pytest_configure(config: pytest.Config) -> None:
    """Quiet, JSON logs in tests: warnings and errors only, captured by pytest."""
    from container_manager.logconfig import configure

    configure("json", "WARNING")
