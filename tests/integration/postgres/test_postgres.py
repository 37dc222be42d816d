"""PostgreSQL-only behaviour: two loops on one database, and LISTEN/NOTIFY pickup.

``scripts/test`` runs the suite a second time with ``DATABASE_URL`` pointing at a throwaway
PostgreSQL cluster; these tests run in that pass (on SQLite they would prove nothing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection

from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost, JobEvent
from executors.mock import MockExecutor
from reconciler import notify
from reconciler.daemon import Daemon, DaemonOptions
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: scripts/test runs this in its PostgreSQL pass")


def daemon_options(**kw: Any) -> DaemonOptions:
    fields = DaemonOptions.__dataclass_fields__
    if "leader_election" in fields:  # both loops must really run: this test is about CAS safety
        kw.setdefault("leader_election", "off")
    return DaemonOptions(**kw)


@pytest.fixture
def running() -> Iterator[Callable[[Daemon], None]]:
    started: list[tuple[Daemon, threading.Thread]] = []

    def start(daemon: Daemon) -> None:
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        assert daemon.ready.wait(10)
        started.append((daemon, thread))

    yield start
    for daemon, _ in started:
        daemon.request_stop()
    for _, thread in started:
        thread.join(20)


def test_two_loops_on_one_database_never_launch_a_job_twice(running: Callable[[Daemon], None]) -> None:
    host = ExecutorHost.objects.create(name="shared-mock", executor_type="mock", max_concurrent_jobs=50)
    mock = host.get_executor()
    assert isinstance(mock, MockExecutor)
    mock.latency = 0.002  # widen the race windows a little
    jobs = [
        ContainerJob.objects.create(
            image="busybox", command="sh -c 'echo x; sleep 0.05'", memory_limit=64, cpu_limit=0.25
        )
        for _ in range(40)
    ]
    for name in ("a", "b"):
        running(
            Daemon(daemon_options(workers=4, poll_seconds=0.02, resync_seconds=0.5, actor=f"daemon:{name}"))
        )
    ids = [j.pk for j in jobs]
    assert wait_until(
        lambda: ContainerJob.objects.filter(pk__in=ids, status="completed").count() == len(ids), 180
    )
    assert len(mock.started) == len(set(mock.started)) == len(ids), "one container per job, started once"
    assert set(ContainerJob.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert ContainerExecution.objects.filter(job_id__in=ids).count() == len(ids)
    actors = set(
        JobEvent.objects.filter(job_id__in=ids, to_status="launching").values_list("actor", flat=True)
    )
    assert actors <= {"daemon:a", "daemon:b"}


def test_notify_wakes_the_daemon_for_rows_inserted_by_sql(running: Callable[[Daemon], None]) -> None:
    ExecutorHost.objects.create(name="mock-n", executor_type="mock")
    # Polling every 30 s: a pickup within a few seconds can only come from NOTIFY.
    running(Daemon(daemon_options(workers=2, poll_seconds=30, resync_seconds=30)))
    time.sleep(0.5)  # let the listener connect
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO container_manager_containerjob (image, command) VALUES (%s, %s) RETURNING id",
            ["busybox", "echo notified"],
        )
        job_id = cursor.fetchone()[0]
    assert wait_until(lambda: ContainerJob.objects.get(pk=job_id).status == "completed", timeout=10)
    assert time.monotonic() - started < 10


def test_cancel_by_sql_update_is_noticed(running: Callable[[Daemon], None]) -> None:
    ExecutorHost.objects.create(name="mock-c", executor_type="mock")
    running(Daemon(daemon_options(workers=2, poll_seconds=30, resync_seconds=30)))
    time.sleep(0.5)  # let the listener connect
    job = ContainerJob.objects.create(image="busybox", command="hang", memory_limit=64)
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "running", timeout=10)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE container_manager_containerjob SET cancel_requested_at = now() WHERE id = %s", [job.pk]
        )
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "cancelled", timeout=10)


def test_notifications_say_whether_a_row_is_new_or_changed() -> None:
    """INSERT asks for a claim; a cancel request names the one job to look at (payload kinds)."""
    import psycopg

    settings_dict = connection.settings_dict
    listener = psycopg.connect(
        dbname=settings_dict["NAME"],
        user=settings_dict.get("USER") or None,
        host=settings_dict.get("HOST") or None,
        port=str(settings_dict.get("PORT") or "") or None,
        autocommit=True,
    )
    try:
        listener.execute(f"LISTEN {notify.CHANNEL}")
        job = ContainerJob.objects.create(image="busybox", command="hang", memory_limit=64)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE container_manager_containerjob SET cancel_requested_at = now() WHERE id = %s",
                [job.pk],
            )
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=2)]
    finally:
        listener.close()
    assert payloads == [f"INSERT:{job.pk}", f"UPDATE:{job.pk}"]
    assert [notify.parse(p) for p in payloads] == [(notify.NEW, job.pk), (notify.CHANGED, job.pk)]


def test_a_wake_up_reaches_the_other_replicas_once_committed_and_at_a_bounded_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``wake_claimers`` (a replica left jobs to others) is ``CLAIM:<token>``; the sender knows its own."""
    import psycopg

    settings_dict = connection.settings_dict
    listener = psycopg.connect(
        dbname=settings_dict["NAME"],
        user=settings_dict.get("USER") or None,
        host=settings_dict.get("HOST") or None,
        port=str(settings_dict.get("PORT") or "") or None,
        autocommit=True,
    )
    monkeypatch.setattr(notify, "_last_wake", [0.0])
    try:
        listener.execute(f"LISTEN {notify.CHANNEL}")
        notify.wake_claimers()
        notify.wake_claimers()  # within WAKE_EVERY_SECONDS: not sent again
        payloads = [n.payload for n in listener.notifies(timeout=1, stop_after=2)]
    finally:
        listener.close()
    assert payloads == [f"CLAIM:{notify.TOKEN}"]
    assert notify.parse(payloads[0]) == (notify.WAKE, notify.TOKEN)
