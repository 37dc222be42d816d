"""Every metric moves when it should; the collector's cost is fixed; the endpoints answer right.

Counters are process-global, so each test reads a sample before and after and compares the
difference. The reconciler runs against the mock executor; the HTTP tests talk to a real
``MetricsServer`` on an ephemeral loopback port.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from container_manager.conf import Policy
from container_manager.models import ContainerJob, ExecutorHost, HealthStatus
from executors.mock import Fault, MockExecutor
from executors.types import LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB, LABEL_MANAGED, ContainerSpec
from metrics import definitions as m
from metrics.collector import JobsCollector
from reconciler.daemon import Daemon, DaemonOptions
from reconciler.step import Reconciler
from tests.unit.metrics_support import Mocks, make_job, run_to_end, sample

#: The only label names the daemon may export (bounded sets); ``le``/``version`` are structural.
ALLOWED_LABELS = {
    "executor",
    "outcome",
    "reason",
    "status",
    "kind",
    "host",
    "verb",
    "transient",
    "le",
    "version",
    "change",
}


# Counters moved by the one-job step -----------------------------------------------------


@pytest.mark.django_db
def test_failed_attempt_counts_outcome_reason_duration_and_detection(mock_host: ExecutorHost) -> None:
    labels = {"executor": "mock", "outcome": "failed", "reason": "exit_code"}
    before = {
        "finished": sample("container_manager_attempts_finished_total", labels),
        "jobs": sample("container_manager_jobs_finished_total", {"status": "failed", "reason": "exit_code"}),
        "run": sample(
            "container_manager_run_duration_seconds_count", {"executor": "mock", "outcome": "failed"}
        ),
        "detect": sample("container_manager_detection_latency_seconds_count", {"executor": "mock"}),
        "launch": sample("container_manager_launch_latency_seconds_count", {"executor": "mock"}),
        "passes": sample("container_manager_reconcile_passes_total"),
        "pass_time": sample("container_manager_reconcile_duration_seconds_count"),
    }
    job = make_job(mock_host, "exit 3")
    reconciler = Reconciler(actor="test")
    job = run_to_end(job, reconciler)
    assert (job.status, job.failure_reason, job.exit_code) == ("failed", "exit_code", 3)
    assert sample("container_manager_attempts_finished_total", labels) == before["finished"] + 1
    assert (
        sample("container_manager_jobs_finished_total", {"status": "failed", "reason": "exit_code"})
        == before["jobs"] + 1
    )
    assert (
        sample("container_manager_run_duration_seconds_count", {"executor": "mock", "outcome": "failed"})
        == before["run"] + 1
    )
    assert (
        sample("container_manager_detection_latency_seconds_count", {"executor": "mock"})
        == before["detect"] + 1
    )
    assert (
        sample("container_manager_launch_latency_seconds_count", {"executor": "mock"}) == before["launch"] + 1
    )
    passes = sample("container_manager_reconcile_passes_total") - before["passes"]
    assert passes >= 1
    assert sample("container_manager_reconcile_duration_seconds_count") - before["pass_time"] == passes


@pytest.mark.django_db
def test_completed_attempt_counts_launch_and_queue_wait(
    mocks: Mocks, clock: Any, mock_host: ExecutorHost
) -> None:
    labels = {"executor": "mock", "outcome": "completed", "reason": ""}
    before_finished = sample("container_manager_attempts_finished_total", labels)
    before_launches = sample("container_manager_launches_total", {"executor": "mock"})
    before_wait = sample("container_manager_queue_wait_seconds_count", {"executor": "mock"})
    before_wait_sum = sample("container_manager_queue_wait_seconds_sum", {"executor": "mock"})
    job = make_job(mock_host, "sh -c 'echo hi; sleep 5'")
    ContainerJob.objects.filter(pk=job.pk).update(created_at=clock() - timedelta(seconds=7))
    reconciler = Reconciler(actor="test", executor_for=mocks, clock=clock)
    job = run_to_end(job, reconciler, clock)
    assert job.status == "completed"
    assert sample("container_manager_attempts_finished_total", labels) == before_finished + 1
    assert sample("container_manager_launches_total", {"executor": "mock"}) == before_launches + 1
    assert sample("container_manager_queue_wait_seconds_count", {"executor": "mock"}) == before_wait + 1
    waited = sample("container_manager_queue_wait_seconds_sum", {"executor": "mock"}) - before_wait_sum
    assert waited == pytest.approx(7.0)


@pytest.mark.django_db
def test_retry_is_counted_by_reason(mock_host: ExecutorHost) -> None:
    before = sample("container_manager_retries_scheduled_total", {"reason": "exit_code"})
    job = make_job(mock_host, "exit 3", max_retries=1, retry_backoff_seconds=0)
    reconciler = Reconciler(actor="test")
    reconciler.reconcile(job.pk)
    job.refresh_from_db()
    assert job.status in ("retrying", "launching", "running", "failed")
    assert sample("container_manager_retries_scheduled_total", {"reason": "exit_code"}) == before + 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("command", "extra", "outcome", "reason"),
    [
        ("oom", {}, "failed", "oom"),
        ("hang", {"timeout_seconds": 2}, "timeout", "timeout"),
        ("sh -c 'sleep 1; vanish'", {}, "failed", "lost"),
    ],
)
def test_each_outcome_lands_in_its_series(
    mocks: Mocks,
    clock: Any,
    mock_host: ExecutorHost,
    command: str,
    extra: dict[str, Any],
    outcome: str,
    reason: str,
) -> None:
    labels = {"executor": "mock", "outcome": outcome, "reason": reason}
    before = sample("container_manager_attempts_finished_total", labels)
    job = make_job(mock_host, command, max_retries=0, **extra)
    job = run_to_end(job, Reconciler(actor="test", executor_for=mocks, clock=clock), clock, rounds=40)
    assert job.status == outcome
    assert sample("container_manager_attempts_finished_total", labels) == before + 1


@pytest.mark.django_db
def test_cancelled_attempt_is_counted(mocks: Mocks, clock: Any, mock_host: ExecutorHost) -> None:
    labels = {"executor": "mock", "outcome": "cancelled", "reason": "cancelled"}
    before = sample("container_manager_attempts_finished_total", labels)
    job = make_job(mock_host, "hang")
    reconciler = Reconciler(actor="test", executor_for=mocks, clock=clock)
    reconciler.reconcile(job.pk)
    job.refresh_from_db()
    job.cancel()
    job = run_to_end(job, reconciler, clock, rounds=40)
    assert job.status == "cancelled"
    assert sample("container_manager_attempts_finished_total", labels) == before + 1


@pytest.mark.django_db
def test_executor_errors_are_counted_by_verb_and_transience(
    mocks: Mocks, clock: Any, mock_host: ExecutorHost
) -> None:
    transient = {"executor": "mock", "verb": "launch", "transient": "true"}
    permanent = {"executor": "mock", "verb": "launch", "transient": "false"}
    before_t, before_p = (
        sample("container_manager_executor_errors_total", transient),
        sample("container_manager_executor_errors_total", permanent),
    )
    before_kind = sample("container_manager_reconcile_errors_total", {"kind": "executor_transient"})
    launch_error = {"executor": "mock", "outcome": "failed", "reason": "launch_refused"}
    before_launch_error = sample("container_manager_attempts_finished_total", launch_error)
    mock = mocks(mock_host)
    mock.inject(Fault.LAUNCH_UNAVAILABLE)
    reconciler = Reconciler(actor="test", executor_for=mocks, clock=clock)
    job = make_job(mock_host, "echo hi")
    reconciler.reconcile(job.pk)
    assert sample("container_manager_executor_errors_total", transient) == before_t + 1
    assert (
        sample("container_manager_reconcile_errors_total", {"kind": "executor_transient"}) == before_kind + 1
    )
    ExecutorHost.objects.filter(pk=mock_host.pk).update(health_status=HealthStatus.HEALTHY)
    mock.inject(Fault.LAUNCH_INVALID, times=None)
    job2 = make_job(mock_host, "echo hi")
    run_to_end(job2, reconciler, clock)
    assert sample("container_manager_executor_errors_total", permanent) >= before_p + 1
    assert sample("container_manager_attempts_finished_total", launch_error) >= before_launch_error + 1


# Counters and gauges moved by the daemon -------------------------------------------------


class FlakyStream(MockExecutor):
    """A mock whose event stream breaks ``breaks`` times before it behaves."""

    def __init__(self, name: str, breaks: int = 2) -> None:
        super().__init__(name)
        self.breaks = breaks
        self.attempts: list[float] = []

    def watch(self, instance: str, stop: threading.Event) -> Iterator[Any]:
        self.attempts.append(time.monotonic())
        if self.breaks > 0:
            self.breaks -= 1
            raise ConnectionError("stream reset")
        yield from super().watch(instance, stop)


@pytest.fixture
def daemon_factory() -> Iterator[Any]:
    made: list[Daemon] = []

    def make(executor_for: Any, **options: Any) -> Daemon:
        policy = Policy(orphan_grace_seconds=0.0, resync_seconds=5.0)
        daemon = Daemon(
            DaemonOptions(workers=1, actor="test", **options), policy=policy, executor_for=executor_for
        )
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop_event.set()
        daemon.hosts.close()
        for thread in daemon.hosts.watchers():
            thread.join(5)


@pytest.mark.django_db(transaction=True)
def test_event_stream_reconnects_are_counted_per_host(daemon_factory: Any) -> None:
    host = ExecutorHost.objects.create(name="flaky", executor_type="mock")
    flaky = FlakyStream("flaky", breaks=1)
    daemon = daemon_factory(lambda h: flaky)
    before = sample("container_manager_event_stream_reconnects_total", {"host": "flaky"})
    daemon.hosts.reconcile(host.pk)  # the host step starts its event watcher
    deadline = time.monotonic() + 5
    while len(flaky.attempts) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sample("container_manager_event_stream_reconnects_total", {"host": "flaky"}) == before + 1
    assert daemon.sources.resync_now.is_set()


@pytest.mark.django_db(transaction=True)
def test_executor_events_are_counted_by_host_and_kind(daemon_factory: Any) -> None:
    host = ExecutorHost.objects.create(name="eventful", executor_type="mock")
    mock = MockExecutor("eventful")
    labels = ((LABEL_ATTEMPT, "1"), (LABEL_INSTANCE, "default"), (LABEL_JOB, "4242"), (LABEL_MANAGED, "true"))
    mock.launch(ContainerSpec(name="cm-default-4242-1", image="busybox", command=("true",), labels=labels))
    daemon = daemon_factory(lambda h: mock)
    started = {"host": "eventful", "kind": "start"}
    died = {"host": "eventful", "kind": "die"}
    before = (
        sample("container_manager_events_received_total", started),
        sample("container_manager_events_received_total", died),
    )
    daemon.hosts.reconcile(host.pk)  # the host step starts its event watcher
    deadline = time.monotonic() + 5
    while (
        sample("container_manager_events_received_total", died) == before[1] and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert sample("container_manager_events_received_total", started) == before[0] + 1
    assert sample("container_manager_events_received_total", died) == before[1] + 1
    assert daemon.queue.get(timeout=1) == 4242  # the event enqueued its job


@pytest.mark.django_db
def test_host_health_gauge_follows_the_probe(daemon_factory: Any) -> None:
    good = ExecutorHost.objects.create(name="good", executor_type="mock")
    bad = ExecutorHost.objects.create(name="bad", executor_type="mock", executor_config={"healthy": False})
    daemon = daemon_factory(lambda h: MockExecutor(h.name, healthy=h.pk != bad.pk))
    for host in (good, bad):
        daemon.hosts.reconcile(host.pk)  # the host step probes a never-checked host
    assert sample("container_manager_host_healthy", {"host": "good"}) == 1
    assert sample("container_manager_host_healthy", {"host": "bad"}) == 0
    good.refresh_from_db()
    assert good.health_status == HealthStatus.HEALTHY


@pytest.mark.django_db
def test_orphan_removal_and_resync_timestamp(daemon_factory: Any, mock_host: ExecutorHost) -> None:
    mock = MockExecutor(mock_host.name)
    labels = (
        (LABEL_ATTEMPT, "1"),
        (LABEL_INSTANCE, "default"),
        (LABEL_JOB, "999999"),
        (LABEL_MANAGED, "true"),
    )
    mock.launch(ContainerSpec(name="cm-default-999999-1", image="busybox", command=("hang",), labels=labels))
    daemon = daemon_factory(lambda h: mock)
    before = sample("container_manager_orphans_removed_total", {"host": mock_host.name})
    started = time.time()
    daemon.hosts.reconcile(mock_host.pk)  # the census removes it (grace 0 s here)
    daemon.resync()
    assert sample("container_manager_orphans_removed_total", {"host": mock_host.name}) == before + 1
    assert mock.list_managed("default") == []
    assert sample("container_manager_last_resync_timestamp_seconds") >= started


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("error", "kind"),
    [(RuntimeError("bug"), "internal"), (OperationalError("database is locked"), "database")],
)
def test_reconcile_errors_are_counted_by_kind(
    daemon_factory: Any, monkeypatch: pytest.MonkeyPatch, error: Exception, kind: str
) -> None:
    daemon = daemon_factory(lambda h: MockExecutor(h.name))

    def boom(job_id: int) -> float | None:
        raise error

    monkeypatch.setattr(daemon.reconciler, "reconcile", boom)
    before = sample("container_manager_reconcile_errors_total", {"kind": kind})
    assert 0 < daemon._process(12345).seconds <= 1.0  # type: ignore[union-attr]
    assert sample("container_manager_reconcile_errors_total", {"kind": kind}) == before + 1


# Naming, zero-initialisation, bounded labels -------------------------------------------


def exposition(registry: CollectorRegistry = m.REGISTRY) -> list[Any]:
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


def test_zero_initialisation_creates_every_label_set() -> None:
    m.zero_initialise(hosts=["zero-host"])
    families = {f.name: f for f in exposition()}
    attempts = {
        (s.labels["executor"], s.labels["outcome"], s.labels["reason"])
        for s in families["container_manager_attempts_finished"].samples
        if s.name.endswith("_total")
    }
    for executor in m.EXECUTOR_KINDS:
        for outcome in m.OUTCOMES:
            for reason in m.REASONS:
                assert (executor, outcome, reason) in attempts
    for name in (
        "container_manager_event_stream_reconnects",
        "container_manager_host_healthy",
        "container_manager_orphans_removed",
    ):
        assert any(s.labels.get("host") == "zero-host" for s in families[name].samples), name
    buckets = [
        s
        for s in families["container_manager_queue_wait_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["executor"] == "docker"
    ]
    assert buckets and buckets[-1].labels["le"] == "+Inf"
    info = families["container_manager_build_info"].samples[0]
    assert info.name == "container_manager_build_info" and info.labels["version"]


def test_names_follow_prometheus_conventions() -> None:
    m.zero_initialise()
    for family in exposition():
        assert family.name.startswith("container_manager_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples if not s.name.endswith("_created"))
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        assert not re.search(r"_(milliseconds|ms|minutes|hours|kb|mb|megabytes)(_|$)", family.name), (
            family.name
        )


@pytest.mark.django_db
def test_no_unbounded_label_anywhere(mock_host: ExecutorHost) -> None:
    make_job(mock_host, "exit 3")
    run_to_end(ContainerJob.objects.get(), Reconciler(actor="test"))
    registry = CollectorRegistry()
    registry.register(JobsCollector())
    for reg in (m.REGISTRY, registry):
        for family in exposition(reg):
            for s in family.samples:
                assert set(s.labels) <= ALLOWED_LABELS, (s.name, s.labels)
                assert not any(word in name for name in s.labels for word in ("job", "container", "attempt"))
