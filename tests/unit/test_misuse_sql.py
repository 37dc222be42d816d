"""Misuse through plain SQL, on SQLite and on PostgreSQL (the suite runs on both): the database
refuses what the code cannot compute with, capacity stays capped, and the upgrade cleans old rows."""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from container_manager.conf import get_policy
from container_manager.models import ContainerJob, ExecutorHost

pytestmark = pytest.mark.django_db


def _insert(table: str, columns: dict[str, Any]) -> None:
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(columns.values()))


def _job_insert(**columns: Any) -> None:
    _insert("container_manager_containerjob", {"image": "busybox", **columns})


def _refused(fn: Any) -> None:
    # IntegrityError for a CHECK; PostgreSQL refuses some values by type first (DataError).
    with pytest.raises(DatabaseError), transaction.atomic():
        fn()


@pytest.mark.parametrize(
    "columns",
    [
        {"memory_limit": "abc"},
        {"memory_limit": 5},
        {"memory_limit": 2**40},
        {"cpu_limit": math.inf},
        {"cpu_limit": 5000.0},
        {"cpu_limit": "lots"},
        {"timeout_seconds": 2**40},
        {"max_retries": 5000},
        {"retry_backoff_seconds": 1e12},
        {"retry_backoff_seconds": math.nan},
        {"retry_backoff_max_seconds": math.inf},
        {"retry_backoff_seconds": "soon"},
        {"priority": 40000},
        {"priority": "high"},
    ],
    ids=repr,
)
def test_sql_inserts_of_numbers_the_code_cannot_use_are_refused(columns: dict[str, Any]) -> None:
    _refused(lambda: _job_insert(**columns))
    assert ContainerJob.objects.count() == 0


def test_sql_nan_limits_are_refused_or_read_as_empty() -> None:
    """PostgreSQL stores NaN (the CHECK refuses it); SQLite turns a NaN into NULL, i.e. the default."""
    if connection.vendor == "postgresql":
        _refused(lambda: _job_insert(cpu_limit=math.nan))
        assert ContainerJob.objects.count() == 0
    else:
        _job_insert(cpu_limit=math.nan)
        assert ContainerJob.objects.get().cpu_limit is None


def test_sql_host_capacity_is_bounded_and_capped_by_the_settings(mock_host: ExecutorHost) -> None:
    _refused(lambda: ExecutorHost.objects.filter(pk=mock_host.pk).update(max_concurrent_jobs=20000))
    _refused(
        lambda: _insert(
            "container_manager_executorhost",
            {"name": "x", "executor_type": "mock", "max_concurrent_jobs": "many", "executor_config": "{}"},
        )
    )
    # Allowed by the database, above the settings' cap of 100: the cap still applies.
    ExecutorHost.objects.filter(pk=mock_host.pk).update(max_concurrent_jobs=1000)
    host = ExecutorHost.objects.with_running_count().get(pk=mock_host.pk)
    assert host.max_concurrent_jobs == 1000
    assert host.effective_max_concurrent_jobs == 100 == host.capacity
    assert host.get_capacity() == {"max_concurrent_jobs": 100, "running": 0, "available": 100}


def test_capacity_follows_a_lowered_cap(mock_host: ExecutorHost, settings: Any) -> None:
    settings.CONTAINER_MANAGER = {"MAX_CONCURRENT_JOBS_CAP": 4, "DEFAULT_MAX_CONCURRENT_JOBS": 2}
    host = ExecutorHost.objects.with_running_count().get(pk=mock_host.pk)
    assert (host.max_concurrent_jobs, host.effective_max_concurrent_jobs, host.capacity) == (10, 4, 4)


def test_the_capacity_metric_is_the_capacity_in_force(mock_host: ExecutorHost) -> None:
    from metrics.collector import _host_rows

    ExecutorHost.objects.filter(pk=mock_host.pk).update(max_concurrent_jobs=1000)
    assert _host_rows(None) == [("mock-1", 0, 100)]


def test_a_sql_row_within_the_database_bounds_but_past_the_settings_fails_launch_checks() -> None:
    from container_manager.jobrules import launch_settings

    _job_insert(retry_backoff_seconds=1e6, max_retries=500)
    with pytest.raises(ValidationError) as info:
        launch_settings(ContainerJob.objects.get(), get_policy())
    assert {"retry_backoff_seconds", "max_retries"} <= set(info.value.message_dict)


# The upgrade: rows written before these constraints existed ------------------------------------

BEFORE, AFTER = "0005_reasons_and_notify_kinds", "0006_secret_keys_and_numeric_bounds"


@pytest.mark.django_db(transaction=True)
def test_the_migration_resets_values_the_new_constraints_refuse() -> None:
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    executor.migrate([("container_manager", BEFORE)])
    try:
        bad = {"memory_limit": 5, "retry_backoff_seconds": 1e12, "max_retries": 5000, "cpu_limit": 5000.0}
        if connection.vendor == "sqlite":
            bad.update(priority=40000, timeout_seconds="abc")  # SQLite keeps what PostgreSQL refuses
        _insert(
            "container_manager_containerjob",
            {"image": "busybox", "command": "", "created_at": "2026-01-01T00:00:00Z", **bad},
        )
        _insert(
            "container_manager_containerjob",
            {"image": "busybox", "command": "", "memory_limit": 256, "created_at": "2026-01-01T00:00:00Z"},
        )
        _insert(
            "container_manager_executorhost",
            {"name": "big", "executor_type": "mock", "max_concurrent_jobs": 20000, "executor_config": "{}"},
        )
        executor = MigrationExecutor(connection)
        executor.migrate([("container_manager", AFTER)])
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT memory_limit, cpu_limit, timeout_seconds, max_retries, retry_backoff_seconds, priority"
                " FROM container_manager_containerjob ORDER BY id"
            )
            rows = cursor.fetchall()
            cursor.execute("SELECT max_concurrent_jobs FROM container_manager_executorhost")
            capacity = cursor.fetchone()[0]
        assert rows[0] == (None, None, None, 0, 5.0, 0)
        assert rows[1][0] == 256  # a good row is left alone
        assert capacity == 10
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)


def test_a_host_row_raised_by_sql_past_the_cap_still_runs_only_the_cap(
    mock_host: ExecutorHost, settings: Any
) -> None:
    """Finding 7: max_concurrent_jobs=1000 written by SQL ran 110 jobs against a cap of 100."""
    settings.CONTAINER_MANAGER = {"MAX_CONCURRENT_JOBS_CAP": 3, "DEFAULT_MAX_CONCURRENT_JOBS": 3}
    ExecutorHost.objects.filter(pk=mock_host.pk).update(max_concurrent_jobs=1000)
    jobs = [
        ContainerJob.objects.create(image="busybox", command="hang", docker_host=mock_host) for _ in range(5)
    ]
    statuses = [job.launch() for job in jobs]
    assert statuses.count("running") == 3 and statuses.count("pending") == 2
    assert ExecutorHost.objects.get(pk=mock_host.pk).get_capacity()["available"] == 0


@pytest.mark.django_db(transaction=True)
def test_the_metrics_server_reports_sql_changed_hosts_without_leaking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    import time
    import urllib.error
    import urllib.request

    from executors.registry import get_executor
    from metrics.server import MetricsServer
    from reconciler.daemon import DaemonOptions

    class Daemon:  # what the server reads of a daemon, building executors the daemon's way
        last_pass = time.monotonic()
        ready = threading.Event()
        stop_event = threading.Event()
        options = DaemonOptions()
        executor_for = staticmethod(get_executor)

    Daemon.ready.set()
    monkeypatch.setenv("DATABASE_URL_COPY", "postgres://app:s3cr3t@db/prod")
    host = ExecutorHost.objects.create(
        name="d", executor_type="docker", connection_string="tcp://127.0.0.1:9"
    )
    ExecutorHost.objects.filter(pk=host.pk).update(
        executor_config={"tls_ca_cert": "env:DATABASE_URL_COPY"}, max_concurrent_jobs=1000
    )
    server = MetricsServer(Daemon(), "127.0.0.1", 0)
    server.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + "/readyz", timeout=10)
        body = info.value.read().decode()
        assert info.value.code == 503 and "s3cr3t" not in body
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert 'container_manager_host_max_concurrent_attempts{host="d"} 100.0' in metrics
        assert "s3cr3t" not in metrics
    finally:
        server.stop()
