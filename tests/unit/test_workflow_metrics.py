"""The metrics of workflows: jobs waiting on dependencies, schedule ticks and their lag."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from container_manager.models import ContainerJob, ExecutorHost, JobSchedule
from metrics import definitions as m
from metrics.collector import JobsCollector
from reconciler import schedules
from reconciler.step import Reconciler


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    value = m.REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def collected(col: JobsCollector) -> dict[str, float]:
    return {s.name: s.value for family in col.collect() for s in family.samples if not s.labels}


def make(**kw: Any) -> ContainerJob:
    return ContainerJob.objects.create(image="busybox", command="echo", memory_limit=64, cpu_limit=0.5, **kw)


def test_schedule_metrics_exist_from_the_start_without_job_labels() -> None:
    m.zero_initialise()
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(m.REGISTRY).decode())}
    outcomes = {s.labels["outcome"] for s in families["container_manager_schedule_ticks"].samples}
    assert outcomes == set(m.TICK_OUTCOMES)
    lag = families["container_manager_schedule_lag_seconds"]
    assert lag.type == "histogram" and any(s.name.endswith("_bucket") for s in lag.samples)
    assert all(set(s.labels) <= {"le"} for s in lag.samples)


@pytest.mark.django_db
def test_the_collector_counts_jobs_waiting_on_dependencies(
    clock: Any, mock_host: ExecutorHost, django_assert_num_queries: Any
) -> None:
    col = JobsCollector(clock=clock)
    assert collected(col)["container_manager_jobs_waiting_on_dependencies"] == 0
    root = make()
    ContainerJob.objects.filter(pk=root.pk).update(created_at=clock() - timedelta(seconds=30))
    waiting = [make(depends_on=[root]) for _ in range(3)]
    for job in waiting:  # waiting on a dependency is not "due": it is not the oldest due job
        ContainerJob.objects.filter(pk=job.pk).update(created_at=clock() - timedelta(hours=2))
    with django_assert_num_queries(2):
        data = collected(col)
    assert data["container_manager_jobs_waiting_on_dependencies"] == 3
    assert data["container_manager_jobs_oldest_due_age_seconds"] == pytest.approx(30)
    ContainerJob.objects.filter(pk=root.pk).update(status="completed", finished_at=clock())
    data = collected(col)
    assert data["container_manager_jobs_waiting_on_dependencies"] == 0
    assert data["container_manager_jobs_oldest_due_age_seconds"] == pytest.approx(7200)


@pytest.mark.django_db
def test_jobs_cancelled_for_a_failed_dependency_are_counted(mock_host: ExecutorHost) -> None:
    labels = {"status": "cancelled", "reason": "dependency_failed"}
    before = sample("container_manager_jobs_finished_total", labels)
    root = make()
    make(depends_on=[root])
    root.cancel()
    Reconciler(actor="test").claim()
    assert sample("container_manager_jobs_finished_total", labels) == before + 1


@pytest.mark.django_db
def test_ticks_and_their_lag_are_measured(mock_host: ExecutorHost) -> None:
    schedule = JobSchedule.objects.create(name="m", cron="* * * * *", image="busybox", memory_limit=64)
    assert schedule.next_run_at is not None
    tick = schedule.next_run_at - timedelta(minutes=3)
    JobSchedule.objects.filter(pk=schedule.pk).update(next_run_at=tick)
    created, count = (
        sample("container_manager_schedule_ticks_total", {"outcome": "created"}),
        sample("container_manager_schedule_lag_seconds_count"),
    )
    lag_sum = sample("container_manager_schedule_lag_seconds_sum")
    schedules.run_due(now=tick + timedelta(seconds=1), actor="test")
    assert sample("container_manager_schedule_ticks_total", {"outcome": "created"}) == created + 1
    assert sample("container_manager_schedule_lag_seconds_count") == count + 1
    job = ContainerJob.objects.get()
    assert job.scheduled_for == tick
    lag = (job.created_at - tick).total_seconds()
    assert sample("container_manager_schedule_lag_seconds_sum") - lag_sum == pytest.approx(lag)
