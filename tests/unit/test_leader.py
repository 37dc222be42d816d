"""Leader election without a PostgreSQL server: the SQLite single-replica lock, the lease
elector's state machine over a scripted connection, the executor guard, and how the daemon
behaves as a standby, as a leader, and after losing leadership (on the mock executor).

The lease SQL itself runs against a real PostgreSQL in tests/integration/ha/.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections

from container_manager import transitions
from container_manager.models import ContainerJob, ExecutorHost
from container_manager.transitions import Fenced
from executors.mock import MockExecutor
from reconciler import daemon as daemon_module
from reconciler import leader
from reconciler.daemon import LEADERSHIP_LOST_EXIT, Daemon, DaemonOptions
from reconciler.exceptions import SingleReplicaOnly
from reconciler.leader import Elector, GuardedExecutor, LeaseElector, SingleReplicaLock, make_elector

# The SQLite lock -----------------------------------------------------------------------------


def test_a_second_sqlite_daemon_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    first, second = SingleReplicaLock(database, "daemon:a:1"), SingleReplicaLock(database, "daemon:b:2")
    first.start()
    assert first.is_leader() and first.path == tmp_path / "db.sqlite3.daemon.lock"
    with pytest.raises(SingleReplicaOnly) as refused:
        second.start()
    message = str(refused.value)
    assert "another daemon (daemon:a:1) already runs against the SQLite database" in message
    assert str(database) in message and "PostgreSQL" in message
    assert not second.is_leader()
    first.stop()
    second.start()
    assert second.is_leader()
    second.stop()


def test_the_lock_is_per_database(tmp_path: Path) -> None:
    one, other = (
        SingleReplicaLock(tmp_path / "a.sqlite3", "x"),
        SingleReplicaLock(tmp_path / "b.sqlite3", "y"),
    )
    one.start()
    other.start()
    one.stop()
    other.stop()


def test_make_elector_modes() -> None:
    assert type(make_elector("off")) is Elector
    with pytest.raises(ValueError, match="auto or off"):
        make_elector("sometimes")
    chosen = make_elector("auto", holder="daemon:test")
    if connection.vendor == "postgresql":
        assert isinstance(chosen, LeaseElector)
    else:
        assert isinstance(chosen, SingleReplicaLock | Elector)
        assert chosen.kind in ("single", "off")


def test_without_election_this_process_always_leads() -> None:
    elector = Elector()
    assert elector.is_leader() and elector.wait_leading(0) and elector.fence() and not elector.lost
    elector.guard()


@pytest.mark.django_db
def test_process_jobs_once_refuses_while_a_sqlite_daemon_runs() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the single-replica lock is for SQLite")
    path = leader.sqlite_path()
    if path is None:
        pytest.skip("in-memory test database")
    lock = SingleReplicaLock(path, "daemon:elsewhere:42")
    lock.start()
    try:
        with pytest.raises(CommandError, match=r"another daemon \(daemon:elsewhere:42\)"):
            call_command("process_jobs", "--once", stdout=io.StringIO(), stderr=io.StringIO())
    finally:
        lock.stop()
    call_command("process_jobs", "--once", stdout=io.StringIO(), stderr=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_process_jobs_once_refuses_while_a_postgresql_daemon_leads() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the lease is for PostgreSQL")
    from datetime import timedelta

    from django.utils import timezone

    from container_manager.models import LeaderLease

    now = timezone.now()
    LeaderLease.objects.create(
        name="reconciler", holder="daemon:elsewhere:7", acquired_at=now, renewed_at=now,
        expires_at=now + timedelta(seconds=30),
    )  # fmt: skip
    with pytest.raises(CommandError, match="daemon:elsewhere:7 leads the replicas"):
        call_command("process_jobs", "--once", stdout=io.StringIO(), stderr=io.StringIO())
    LeaderLease.objects.update(expires_at=now)
    call_command("process_jobs", "--once", stdout=io.StringIO(), stderr=io.StringIO())


# The lease elector over a scripted connection ---------------------------------------------------


class FakeLeaseTable:
    """The lease row's semantics in Python, keyed on the SQL the elector sends."""

    def __init__(self) -> None:
        self.row: dict[str, Any] | None = None
        self.sessions_alive: set[int] = set()
        self.fail = False
        self._next_pid = 100

    def connect(self, elector: LeaseElector) -> FakeConnection:
        if self.fail:
            raise OSError("connection refused")
        self._next_pid += 1
        self.sessions_alive.add(self._next_pid)
        return FakeConnection(self, self._next_pid)

    def expired(self) -> bool:
        assert self.row is not None
        return self.row["expires"] <= time.monotonic()


class FakeResult:
    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.row = row

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.row


class FakeConnection:
    def __init__(self, table: FakeLeaseTable, pid: int) -> None:
        self.table, self.pid, self.closed = table, pid, False

    def close(self) -> None:
        self.closed = True
        self.table.sessions_alive.discard(self.pid)

    def execute(self, sql: str, params: dict[str, Any]) -> FakeResult:
        table = self.table
        if table.fail:
            raise OSError("server closed the connection")
        now = time.monotonic()
        row = table.row
        if sql == leader._TAKEOVER_SQL:
            if row and (table.expired() or row["pid"] not in table.sessions_alive):
                row.update(
                    holder=params["holder"], epoch=row["epoch"] + 1, pid=self.pid, expires=now + params["ttl"]
                )
                return FakeResult((row["epoch"],))
            return FakeResult(None)
        if sql == leader.CREATE_LEASE_SQL:
            if row is None:
                table.row = {
                    "holder": params["holder"],
                    "epoch": 1,
                    "pid": self.pid,
                    "expires": now + params["ttl"],
                }
                return FakeResult((1,))
            return FakeResult(None)
        if sql == leader._RENEW_SQL:
            if (
                row
                and row["holder"] == params["holder"]
                and row["epoch"] == params["epoch"]
                and not table.expired()
            ):
                row.update(expires=now + params["ttl"], pid=self.pid)
                return FakeResult((row["epoch"],))
            return FakeResult(None)
        if sql == leader._RELEASE_SQL:
            if row and row["holder"] == params["holder"] and row["epoch"] == params["epoch"]:
                row.update(expires=now, pid=None)
            return FakeResult(None)
        if sql == leader._PEEK_SQL:
            return FakeResult(None if row is None else (row["holder"], row["epoch"], row["expires"] - now))
        raise AssertionError(f"unexpected SQL: {sql}")


@pytest.fixture
def table() -> FakeLeaseTable:
    return FakeLeaseTable()


@pytest.fixture
def electors(table: FakeLeaseTable) -> Iterator[Any]:
    made: list[LeaseElector] = []

    def make(name: str, ttl: float = 0.5) -> LeaseElector:
        elector = LeaseElector(name="t", holder=f"daemon:{name}", ttl=ttl, connect=table.connect)
        made.append(elector)
        return elector

    yield make
    for elector in made:
        elector.stop(release=False)


def test_lease_acquire_renew_and_standby(electors: Any) -> None:
    a, b = electors("a"), electors("b")
    assert a.campaign_once() and a.epoch == 1 and a.is_leader()
    assert not b.campaign_once() and b.describe().startswith("standby: lease 't' held by daemon:a (epoch 1")
    time.sleep(0.3)
    assert a.campaign_once(), "renewed"
    time.sleep(0.3)
    assert a.is_leader(), "the renewal extended the local bound"
    assert a.describe() == "leader (lease 't', epoch 1)"


def test_a_leader_that_cannot_renew_stops_leading_when_its_bound_runs_out(
    electors: Any, table: FakeLeaseTable
) -> None:
    a = electors("a", ttl=0.3)
    a.start()
    assert a.wait_leading(1)
    table.fail = True  # the database becomes unreachable
    assert a.is_leader(), "still within the lease"
    deadline = time.monotonic() + 2
    while not a.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.lost and not a.is_leader()
    assert "could not be renewed within 0.3 s" in a.lost_reason
    with pytest.raises(Fenced):
        a.guard()
    assert not a.fence(), "no database round trip needed to refuse"


def test_a_takeover_is_noticed_at_the_next_renewal(electors: Any, table: FakeLeaseTable) -> None:
    a, b = electors("a"), electors("b")
    assert a.campaign_once()
    a._drop()  # a's session dies (network): a standby may take over at once
    assert b.campaign_once() and b.epoch == 2
    assert not a.campaign_once()
    assert a.lost and a.lost_reason == "daemon:b took the lease over (epoch 2)"
    assert a.describe().startswith("lost leadership")
    assert not a.campaign_once(), "a process never regains leadership once lost"


def test_stop_releases_the_lease(electors: Any, table: FakeLeaseTable) -> None:
    a, b = electors("a", ttl=30), electors("b", ttl=30)
    assert a.campaign_once()
    assert not b.campaign_once()
    a.stop(release=True)
    assert not a.is_leader()
    assert b.campaign_once()


def test_database_errors_in_the_campaign_loop_are_retried(electors: Any, table: FakeLeaseTable) -> None:
    table.fail = True
    a = electors("a", ttl=0.25)
    a._thread = threading.Thread(target=a._loop, daemon=True)  # as start() would, minus the first try
    a._thread.start()
    time.sleep(0.2)
    assert not a.is_leader()
    table.fail = False
    assert a.wait_leading(2)


# The executor guard ----------------------------------------------------------------------------


class Switch(Elector):
    """An elector the test flips by hand."""

    kind = "test"

    def __init__(self, leading: bool = False) -> None:
        self.leading = threading.Event()
        if leading:
            self.leading.set()
        self.was_lost = False
        self.released: bool | None = None

    @property
    def needs_fence(self) -> bool:
        return True

    def wait_leading(self, timeout: float | None = None) -> bool:
        return self.leading.wait(timeout)

    def is_leader(self) -> bool:
        return self.leading.is_set() and not self.was_lost

    @property
    def lost(self) -> bool:
        return self.was_lost

    @property
    def lost_reason(self) -> str:
        return "test"

    def stop(self, *, release: bool = True) -> None:
        self.released = release

    def describe(self) -> str:
        return "leader (test)" if self.is_leader() else "standby (test)"


def test_state_changing_executor_calls_need_leadership() -> None:
    switch = Switch(leading=True)
    guarded = GuardedExecutor(MockExecutor("g"), switch.guard)
    assert guarded.list_managed("default") == []
    switch.leading.clear()
    for verb in ("launch", "stop", "remove"):
        with pytest.raises(Fenced):
            getattr(guarded, verb)("cm-x-1-1")
    assert guarded.list_managed("default") == [], "reads are not guarded"
    assert guarded.supports_events is True


# The daemon as standby, leader and former leader -------------------------------------------------


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def _run(daemon: Daemon, result: list[int]) -> None:
    try:
        result.append(daemon.run())
    finally:
        connections.close_all()  # this thread's connections, so the test database can be dropped


@pytest.mark.django_db(transaction=True)
def test_the_daemon_drives_its_hosts_whether_it_leads_and_exits_75_when_it_loses_its_lease(
    monkeypatch: Any,
) -> None:
    """Leading is only the leader's duties (the job-table metrics): every replica drives hosts.

    A replica that held the lease and lost it exits 75, for its supervisor to restart it.
    """
    host = ExecutorHost.objects.create(name="mock-ha", executor_type="mock", max_concurrent_jobs=10)
    mock = host.get_executor()
    switch = Switch()
    monkeypatch.setattr(daemon_module, "make_elector", lambda *a, **k: switch)
    daemon = Daemon(DaemonOptions(workers=2, poll_seconds=0.05, resync_seconds=0.5))
    result: list[int] = []
    thread = threading.Thread(target=_run, args=(daemon, result), daemon=True)
    thread.start()
    try:
        assert daemon.ready.wait(10)
        assert not daemon.is_leader()
        quick = ContainerJob.objects.create(image="busybox", command="echo hi", memory_limit=64)
        assert _wait(lambda: ContainerJob.objects.get(pk=quick.pk).status == "completed"), (
            "not leading: works"
        )
        switch.leading.set()
        assert daemon.is_leader()
        slow = ContainerJob.objects.create(image="busybox", command="hang", memory_limit=64)
        assert _wait(lambda: ContainerJob.objects.get(pk=slow.pk).status == "running")
        # The finished job's container goes in the next cleanup batch.
        assert _wait(lambda: len(mock.list_managed("default")) == 1)

        switch.was_lost = True
        thread.join(10)
        assert not thread.is_alive() and result == [LEADERSHIP_LOST_EXIT]
    finally:
        daemon.request_stop()
        thread.join(10)
    assert switch.released is False, "a lost lease is not 'released' over the new leader's"
    assert transitions._fence is None
    assert ContainerJob.objects.get(pk=slow.pk).status == "running"
    assert [c.state.value for c in mock.list_managed("default")] == ["running"], "its container keeps running"


@pytest.mark.django_db(transaction=True)
def test_a_replica_that_does_not_lead_stops_cleanly_on_request(monkeypatch: Any) -> None:
    switch = Switch()
    monkeypatch.setattr(daemon_module, "make_elector", lambda *a, **k: switch)
    daemon = Daemon(DaemonOptions(workers=1, poll_seconds=0.05))
    result: list[int] = []
    thread = threading.Thread(target=_run, args=(daemon, result), daemon=True)
    thread.start()
    assert daemon.ready.wait(10)
    daemon.request_stop()
    thread.join(10)
    assert result == [0] and switch.released is True
