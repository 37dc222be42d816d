"""The executors' own request counts reach Prometheus (``metrics.executor_calls``)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from container_manager.models import ExecutorHost
from executors import registry as executors
from executors.exceptions import Unavailable
from executors.mock import MockExecutor
from metrics import executor_calls

pytestmark = pytest.mark.django_db


def value(registry: CollectorRegistry, family: str, host: str, verb: str) -> float | None:
    return registry.get_sample_value(f"{family}_total", {"executor": "mock", "host": host, "verb": verb})


def test_every_executor_in_use_reports_its_calls_retries_and_errors() -> None:
    executors.forget()
    busy = ExecutorHost.objects.create(name="mock-busy", executor_type="mock")
    idle = ExecutorHost.objects.create(name="mock-idle", executor_type="mock")
    executor = busy.get_executor()
    assert isinstance(executor, MockExecutor)
    idle.get_executor()
    for _ in range(3):
        executor.inspect("cm-x-1-1")
    executor.healthy = False
    with pytest.raises(Unavailable):
        executor.list_managed("x")
    registry = CollectorRegistry()
    assert executor_calls.register(registry) is executor_calls.register(registry), "registered once"

    assert value(registry, "container_manager_executor_requests", "mock-busy", "inspect") == 3
    assert value(registry, "container_manager_executor_requests", "mock-busy", "list") == 1
    assert value(registry, "container_manager_executor_request_errors", "mock-busy", "list") == 1
    assert value(registry, "container_manager_executor_request_errors", "mock-busy", "inspect") == 0
    assert value(registry, "container_manager_executor_request_retries", "mock-busy", "inspect") == 0
    # An executor that sent nothing yet still has its series, at zero, from the first scrape.
    assert value(registry, "container_manager_executor_requests", "mock-idle", "launch") == 0

    executors.forget(busy.pk)  # e.g. the host was deleted: its executor is closed and not reported
    assert value(registry, "container_manager_executor_requests", "mock-busy", "inspect") is None
    executors.forget()
