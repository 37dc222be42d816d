"""The scrape-time collector's cost and the daemon's HTTP endpoints (/metrics, /healthz, /readyz).

The HTTP tests talk to a real ``MetricsServer`` on an ephemeral loopback port.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, connections
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from container_manager.conf import Policy
from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost, HealthStatus
from executors.mock import MockExecutor
from metrics import collector as collector_module
from metrics.collector import JobsCollector
from metrics.server import MetricsServer
from reconciler.daemon import Daemon, DaemonOptions
from reconciler.queue import WorkQueue
from reconciler.step import Reconciler
from tests.unit.metrics_support import Mocks, make_job, run_to_end, sample

# The scrape-time collector ---------------------------------------------------------------


def collected(col: JobsCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in col.collect():
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.mark.django_db
def test_collector_counts_jobs_by_status_zero_filled(mock_host: ExecutorHost) -> None:
    make_job(mock_host, "echo 1")
    make_job(mock_host, "echo 2")
    done = make_job(mock_host, "echo 3")
    run_to_end(done, Reconciler(actor="test"))
    jobs = collected(JobsCollector())["container_manager_jobs"]
    assert jobs == {
        (("status", "pending"),): 2,
        (("status", "launching"),): 0,
        (("status", "running"),): 0,
        (("status", "retrying"),): 0,
        (("status", "completed"),): 1,
        (("status", "failed"),): 0,
        (("status", "timeout"),): 0,
        (("status", "cancelled"),): 0,
    }


@pytest.mark.django_db
def test_collector_counts_live_attempts_per_active_host(mocks: Mocks, clock: Any) -> None:
    busy = ExecutorHost.objects.create(name="busy", executor_type="mock", max_concurrent_jobs=7)
    ExecutorHost.objects.create(name="idle", executor_type="mock")
    ExecutorHost.objects.create(name="off", executor_type="mock", is_active=False)
    reconciler = Reconciler(actor="test", executor_for=mocks, clock=clock)
    for _ in range(3):
        reconciler.reconcile(make_job(busy, "hang").pk)
    assert ContainerExecution.objects.filter(status="running").count() == 3
    data = collected(JobsCollector())
    assert data["container_manager_host_running_attempts"] == {(("host", "busy"),): 3, (("host", "idle"),): 0}
    assert data["container_manager_host_max_concurrent_attempts"][(("host", "busy"),)] == 7
    assert data["container_manager_jobs"][(("status", "running"),)] == 3
    only = collected(JobsCollector(host_names=["idle"]))
    assert only["container_manager_host_running_attempts"] == {(("host", "idle"),): 0}


@pytest.mark.django_db
def test_collector_reports_the_oldest_due_job(clock: Any, mock_host: ExecutorHost) -> None:
    now = clock()
    col = JobsCollector(clock=clock)
    assert collected(col)["container_manager_jobs_oldest_due_age_seconds"][()] == 0
    old = make_job(mock_host, "echo")
    ContainerJob.objects.filter(pk=old.pk).update(created_at=now - timedelta(seconds=90))
    later = make_job(mock_host, "echo", run_after=now + timedelta(hours=1))
    ContainerJob.objects.filter(pk=later.pk).update(created_at=now - timedelta(hours=5))
    assert collected(col)["container_manager_jobs_oldest_due_age_seconds"][()] == pytest.approx(90)
    ContainerJob.objects.filter(pk=old.pk).delete()
    assert collected(col)["container_manager_jobs_oldest_due_age_seconds"][()] == 0


@pytest.mark.django_db
@pytest.mark.parametrize("rows", [1, 60])
def test_collector_costs_two_queries_whatever_the_row_count(
    django_assert_num_queries: Any, mock_host: ExecutorHost, rows: int
) -> None:
    jobs = ContainerJob.objects.bulk_create(
        [ContainerJob(image="busybox", command="echo", docker_host=mock_host) for _ in range(rows)]
    )
    # Finished attempts on the host: history that must not change the cost.
    ContainerExecution.objects.bulk_create(
        [
            ContainerExecution(
                job=job,
                attempt=1,
                executor_host=mock_host,
                host_name=mock_host.name,
                executor_type="mock",
                container_name=f"cm-default-{job.pk}-1",
                status="completed" if index else "running",
            )
            for index, job in enumerate(jobs)
        ]
    )
    for index in range(3):
        ExecutorHost.objects.create(name=f"extra-{index}", executor_type="mock")
    col = JobsCollector()
    with django_assert_num_queries(2):
        data = collected(col)
    assert data["container_manager_jobs"][(("status", "pending"),)] == rows
    assert data["container_manager_host_running_attempts"][(("host", mock_host.name),)] == 1
    assert data["container_manager_host_running_attempts"][(("host", "extra-0"),)] == 0
    assert data["container_manager_jobs_collector_up"][()] == 1


def test_collector_survives_a_database_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def down(now: Any) -> Any:
        raise RuntimeError("database is down")

    monkeypatch.setattr(collector_module, "_job_rows", down)
    data = collected(JobsCollector())
    assert data["container_manager_jobs_collector_up"] == {(): 0}
    assert "container_manager_jobs" not in data


def test_collector_registration_is_idempotent_and_lazy() -> None:
    registry = CollectorRegistry()
    first = collector_module.register(registry)
    assert collector_module.register(registry) is first  # no "duplicated timeseries" error


# The HTTP endpoint ------------------------------------------------------------------------


class FakeDaemon:
    """The attributes of ``reconciler.daemon.Daemon`` the server reads."""

    def __init__(self, *, leader: bool = True, started: bool = True) -> None:
        self.last_pass = time.monotonic()
        self.ready = threading.Event()
        if started:
            self.ready.set()
        self.stop_event = threading.Event()
        self.resync_seconds = 10.0
        self.queue = WorkQueue()
        self.options = DaemonOptions()
        self.leader = leader
        self.executor_for = lambda host: MockExecutor(
            host.name, healthy=host.executor_config.get("healthy", True)
        )

    def is_leader(self) -> bool:
        return self.leader


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Response:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return Response(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, dict(err.headers), err.read())


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[MetricsServer] = []

    def start(daemon: Any, **kw: Any) -> MetricsServer:
        server = MetricsServer(daemon, "127.0.0.1", 0, **kw)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_metrics_endpoint_serves_the_registry_and_the_collector(serve: Any) -> None:
    ExecutorHost.objects.create(name="scraped", executor_type="mock")
    daemon = FakeDaemon()
    daemon.queue.add(1)
    daemon.queue.add(2)
    daemon.queue.add_after(3, 60)
    server = serve(daemon)
    resp = get(server.url + "/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = resp.body.decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert values[("container_manager_jobs", (("status", "pending"),))] == 0
    assert values[("container_manager_host_running_attempts", (("host", "scraped"),))] == 0
    assert values[("container_manager_jobs_collector_up", ())] == 1
    assert values[("container_manager_leader", ())] == 1
    assert values[("container_manager_work_queue_depth", ())] == 2
    assert values[("container_manager_work_queue_delayed", ())] == 1
    assert values[("container_manager_resync_interval_seconds", ())] == 10
    assert "_created" not in text
    zipped = get(server.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert b"container_manager_jobs" in gzip.decompress(zipped.body)


def test_unknown_paths_and_head(serve: Any) -> None:
    server = serve(FakeDaemon())
    assert get(server.url + "/nope").status == 404
    head = get(server.url + "/healthz", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert get(server.url + "/").status == 200


def test_healthz_follows_the_age_of_the_last_pass(serve: Any) -> None:
    daemon = FakeDaemon()
    server = serve(daemon)
    ok = get(server.url + "/healthz")
    assert ok.status == 200
    assert ok.json()["status"] == "ok" and ok.json()["threshold_seconds"] == 30
    daemon.last_pass = time.monotonic() - 31
    stalled = get(server.url + "/healthz")
    assert stalled.status == 503
    assert stalled.json()["status"] == "stalled" and stalled.json()["last_pass_age_seconds"] >= 31


@pytest.mark.django_db(transaction=True)
def test_readyz_needs_a_healthy_host_and_states_the_role(serve: Any) -> None:
    daemon = FakeDaemon()
    server = serve(daemon)
    none = get(server.url + "/readyz")
    assert none.status == 503 and "no healthy executor host" in none.json()["problems"]
    host = ExecutorHost.objects.create(name="r1", executor_type="mock", executor_config={"healthy": False})
    down = get(server.url + "/readyz")
    assert down.status == 503 and down.json()["executors"] == {"r1": "unknown"}
    ExecutorHost.objects.filter(pk=host.pk).update(health_status=HealthStatus.HEALTHY)
    ready = get(server.url + "/readyz")
    assert ready.status == 200
    assert ready.json() == {
        "ready": True,
        "role": "leader",
        "hosts": "every host",
        "database": "ok",
        "executors": {"r1": "healthy"},
        "problems": [],
    }
    daemon.leader = False
    assert get(server.url + "/readyz").json()["role"] == "replica"
    assert get(server.url + "/readyz").status == 200


@pytest.mark.django_db(transaction=True)
def test_readyz_probes_hosts_without_a_recorded_health(serve: Any) -> None:
    ExecutorHost.objects.create(name="fresh", executor_type="mock")
    server = serve(FakeDaemon())
    resp = get(server.url + "/readyz")
    assert resp.status == 200 and resp.json()["executors"] == {"fresh": "healthy"}


@pytest.mark.django_db(transaction=True)
def test_readyz_fails_before_start_while_stopping_and_without_database(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ExecutorHost.objects.create(name="h", executor_type="mock", health_status=HealthStatus.HEALTHY)
    daemon = FakeDaemon(started=False)
    server = serve(daemon)
    assert get(server.url + "/readyz").json()["problems"] == ["daemon not started yet"]
    daemon.ready.set()
    daemon.stop_event.set()
    assert get(server.url + "/readyz").status == 503
    daemon.stop_event.clear()

    from django.db.backends.base.base import BaseDatabaseWrapper

    def refuse(self: Any, *args: Any, **kw: Any) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr(BaseDatabaseWrapper, "cursor", refuse)
    resp = get(server.url + "/readyz")
    assert resp.status == 503
    assert resp.json()["database"] == "error: OperationalError"
    assert "database unreachable" in resp.json()["problems"]


def test_server_binds_loopback_by_default_and_reports_busy_ports(serve: Any) -> None:
    server = serve(FakeDaemon())
    assert server.addr == "127.0.0.1" and MetricsServer(FakeDaemon()).addr == "127.0.0.1"
    with pytest.raises(OSError):
        MetricsServer(FakeDaemon(), "127.0.0.1", server.port).start()


@pytest.mark.django_db(transaction=True)
def test_a_real_daemon_is_healthy_and_ready(serve: Any) -> None:
    ExecutorHost.objects.create(name="live", executor_type="mock")
    daemon = Daemon(
        DaemonOptions(workers=1, actor="test", poll_seconds=0.05), policy=Policy(resync_seconds=1.0)
    )
    server = serve(daemon)

    def run() -> None:
        try:
            daemon.run()
        finally:
            connections.close_all()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while get(server.url + "/readyz").status != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(server.url + "/readyz").status == 200
        assert get(server.url + "/healthz").status == 200
        assert sample("container_manager_host_healthy", {"host": "live"}) == 1
    finally:
        daemon.request_stop()
        runner.join(15)


def test_leader_gauge_follows_the_daemon(serve: Any) -> None:
    daemon = FakeDaemon(leader=False)
    server = serve(daemon)
    assert b"container_manager_leader 0.0" in get(server.url + "/metrics").body
    daemon.leader = True
    assert b"container_manager_leader 1.0" in get(server.url + "/metrics").body
