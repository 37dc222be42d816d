"""Plain SQL: rows written past the ORM get database defaults, CHECK constraints and a launch-time re-check."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from container_manager.conf import get_policy
from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost

pytestmark = pytest.mark.django_db


# The database enforces what SQL clients could break -----------------------------------------


def _sql_insert(columns: dict[str, Any]) -> int:
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO container_manager_containerjob ({names}) VALUES ({marks})", list(columns.values())
        )
    return ContainerJob.objects.order_by("-id").values_list("id", flat=True)[0]


def test_plain_sql_insert_gets_database_defaults() -> None:
    before = timezone.now()
    job_id = _sql_insert({"image": "busybox", "command": "echo hi"})
    row = ContainerJob.objects.filter(pk=job_id).values().get()
    assert row["status"] == "pending"
    assert (row["priority"], row["attempts"], row["max_retries"]) == (0, 0, 0)
    assert (row["name"], row["override_environment"], row["failure_reason"], row["created_by"]) == (
        "",
        "",
        "",
        "",
    )
    assert row["retry_on"] == "exit_code,oom,lost,launch_error"
    assert (row["retry_backoff_seconds"], row["retry_backoff_max_seconds"]) == (5.0, 300.0)
    assert row["memory_limit"] is None and row["docker_host_id"] is None and row["finished_at"] is None
    for column in ("created_at", "updated_at"):
        assert abs((row[column] - before).total_seconds()) < 120, column
    assert ContainerJob.objects.pending().filter(pk=job_id).exists()


def test_plain_sql_row_is_picked_up_by_the_reconciler(mock_host: ExecutorHost) -> None:
    from reconciler.step import Reconciler

    job_id = _sql_insert({"image": "busybox", "command": "echo hi"})
    Reconciler(actor="test").reconcile(job_id)
    job = ContainerJob.objects.get(pk=job_id)
    assert job.status == "completed"
    assert job.attempts == 1
    # The reconciler records the settings defaults the SQL client left out.
    assert job.memory_limit == get_policy().default_memory_mb
    execution = job.executions.get()
    assert (execution.host_name, execution.exit_code, execution.stdout) == ("mock-1", 0, "hi\n")
    assert mock_host.get_executor().created == [execution.container_name]  # type: ignore[attr-defined]
    assert list(job.events.values_list("to_status", "actor")) == [
        ("launching", "test"),
        ("completed", "test"),
    ]


def test_plain_sql_row_breaking_policy_fails_at_launch(mock_host: ExecutorHost) -> None:
    from reconciler.step import Reconciler

    job_id = _sql_insert({"image": "busybox", "memory_limit": 100000})
    Reconciler(actor="test").reconcile(job_id)
    job = ContainerJob.objects.get(pk=job_id)
    assert (job.status, job.failure_reason) == ("failed", "invalid_spec")
    assert "memory_limit" in job.status_message
    assert mock_host.get_executor().created == []  # type: ignore[attr-defined]


def _refused(fn: Any) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        fn()


@pytest.mark.parametrize(
    "values",
    [
        {"memory_limit": 1},
        {"cpu_limit": 0},
        {"timeout_seconds": 0},
        {"status": "bogus"},
        {"failure_reason": "bogus"},
        {"image": ""},
        {"status": "completed"},
        {"retry_backoff_seconds": -1},
    ],
    ids=str,
)
def test_check_constraints_refuse_bad_updates(values: dict[str, Any]) -> None:
    job = ContainerJob.objects.create(image="busybox")
    before = ContainerJob.objects.filter(pk=job.pk).values().get()
    _refused(lambda: ContainerJob.objects.filter(pk=job.pk).update(**values))
    assert ContainerJob.objects.filter(pk=job.pk).values().get() == before


@pytest.mark.parametrize(
    "columns",
    [
        {"image": ""},
        {"image": "busybox", "status": "bogus"},
        {"image": "busybox", "memory_limit": 1},
        {"image": "busybox", "status": "failed"},
    ],
    ids=str,
)
def test_check_constraints_refuse_bad_sql_inserts(columns: dict[str, Any]) -> None:
    _refused(lambda: _sql_insert(columns))
    assert ContainerJob.objects.count() == 0


def test_host_and_execution_constraints() -> None:
    host = ExecutorHost.objects.create(name="h", executor_type="mock")
    _refused(lambda: ExecutorHost.objects.filter(pk=host.pk).update(max_concurrent_jobs=0))
    _refused(lambda: ExecutorHost.objects.filter(pk=host.pk).update(executor_type="bogus"))
    _refused(lambda: ExecutorHost.objects.filter(pk=host.pk).update(name=""))
    job = ContainerJob.objects.create(image="busybox")
    _refused(lambda: ContainerExecution.objects.create(job=job, attempt=0, container_name="c0"))
    ContainerExecution.objects.create(job=job, attempt=1, container_name="c1")
    _refused(lambda: ContainerExecution.objects.create(job=job, attempt=1, container_name="c1b"))
    _refused(lambda: ContainerExecution.objects.create(job=job, attempt=2, container_name="c1"))
    _refused(lambda: ContainerExecution.objects.filter(job=job).update(status="bogus"))
    assert ContainerExecution.objects.count() == 1
