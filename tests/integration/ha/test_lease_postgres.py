"""The lease protocol of ``reconciler.leader`` against a real PostgreSQL, in one process.

Each "replica" is a ``LeaseElector`` with its own session; pausing a leader is simulated by
not renewing, killing it by closing its session. These pin the properties the daemon relies on:
one leader at a time, fast takeover when the leader's session dies, takeover after expiry when
it only stops renewing, a fence that the former leader can no longer pass, and a fenced
transaction that holds the lease row so no takeover can commit underneath it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from reconciler.exceptions import AnotherDaemonLeads, LeaderElectionError
from reconciler.leader import LeaseElector, session_options
from tests.integration.ha.support import query, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def make(ha_database: str) -> Iterator[Any]:
    made: list[LeaseElector] = []

    def factory(name: str, ttl: float = 1.0, url: str = ha_database) -> LeaseElector:
        elector = LeaseElector(
            name="test",
            holder=f"daemon:test:{name}",
            ttl=ttl,
            connect=lambda e: psycopg.connect(url, autocommit=True, options=session_options(e)),
        )
        made.append(elector)
        return elector

    yield factory
    for elector in made:
        elector.stop(release=False)


def _campaign(elector: LeaseElector) -> bool:
    """One attempt; a lock timeout (the row is held by a fenced transaction) counts as 'not yet'."""
    try:
        return elector.campaign_once()
    except psycopg.errors.LockNotAvailable:
        return False


def test_one_leader_at_a_time(make: Any) -> None:
    a, b = make("a"), make("b")
    assert a.campaign_once() and a.is_leader() and a.epoch == 1
    assert not b.campaign_once() and not b.is_leader()
    assert b.seen is not None and b.seen.holder == a.holder and b.seen.remaining > 0
    assert "held by daemon:test:a" in b.describe()
    assert a.campaign_once(), "renewal keeps the lease"
    assert not b.campaign_once()


def test_a_dead_leaders_session_is_replaced_without_waiting_for_the_lease(make: Any) -> None:
    a, b = make("a", ttl=30.0), make("b", ttl=30.0)
    assert a.campaign_once()
    a._drop()  # the process died: its election session is gone
    started = time.monotonic()
    assert wait_until(lambda: b.campaign_once(), timeout=3.0), "a standby takes over a dead leader's lease"
    assert time.monotonic() - started < 3.0, "not after the 30 s TTL"
    assert b.epoch == 2
    assert not a.campaign_once() and a.lost
    assert "daemon:test:b took the lease over (epoch 2)" in a.lost_reason


def test_an_expired_lease_is_taken_over_and_the_former_leader_is_fenced(make: Any, ha_database: str) -> None:
    a, b = make("a", ttl=1.0), make("b", ttl=1.0)
    assert a.campaign_once()
    assert not b.campaign_once(), "the leader is alive: its session still exists"
    time.sleep(1.1)  # a is "paused": it does not renew
    assert b.campaign_once() and b.epoch == 2
    assert not a.is_leader(), "the local bound ran out as well"
    a._valid_until = float("inf")  # even a leader whose clock disagrees cannot write:
    with psycopg.connect(ha_database) as conn, conn.cursor() as cursor:
        assert not a.fence(cursor)
    with psycopg.connect(ha_database) as conn, conn.cursor() as cursor:
        assert b.fence(cursor)


def test_a_fenced_transaction_holds_off_a_takeover_until_it_ends(make: Any, ha_database: str) -> None:
    a, b = make("a", ttl=3.0), make("b", ttl=3.0)
    assert a.campaign_once()
    writer = psycopg.connect(ha_database)
    try:
        assert a.fence(writer.cursor())  # the transaction is open, the lease row share-locked
        a._drop()  # a dies (its election session ends) while its write is in flight
        with pytest.raises(psycopg.errors.LockNotAvailable):
            b.campaign_once()
        writer.commit()  # the write lands while a still led...
        assert b.campaign_once(), "...and only then can b take over"
    finally:
        writer.close()


def test_a_leader_paused_inside_a_transaction_loses_its_session(make: Any, ha_database: str) -> None:
    a, b = make("a", ttl=1.0), make("b", ttl=1.0)
    assert a.campaign_once()
    writer = psycopg.connect(ha_database)
    try:
        assert a.fence(writer.cursor())
        started = time.monotonic()
        # a is paused inside its transaction: idle_in_transaction_session_timeout (= TTL) ends it.
        assert wait_until(lambda: _campaign(b), timeout=5.0, interval=0.1)
        assert time.monotonic() - started < 3.0
        with pytest.raises(psycopg.Error, match="idle-in-transaction"):
            writer.execute("SELECT 1")
            writer.commit()
    finally:
        writer.close()


def test_release_hands_the_lease_over_at_once(make: Any) -> None:
    a, b = make("a", ttl=30.0), make("b", ttl=30.0)
    assert a.campaign_once()
    a._drop()
    a.stop(release=True)  # reconnects to release
    assert b.campaign_once()
    assert b.epoch == 2


def test_the_thread_renews_and_notices_a_takeover(make: Any, ha_database: str) -> None:
    a = make("a", ttl=1.0)
    a.start()
    assert a.wait_leading(2)
    time.sleep(1.5)
    assert a.is_leader() and not a.lost, "renewed several times past the TTL"
    query(ha_database, "UPDATE container_manager_leaderlease SET holder = 'intruder', epoch = epoch + 1")
    assert wait_until(lambda: a.lost, timeout=2.0)
    assert not a.is_leader()
    assert "intruder took the lease over" in a.lost_reason


def test_a_one_shot_pass_refuses_while_a_daemon_leads(make: Any) -> None:
    a, once = make("a", ttl=30.0), make("once")
    assert a.campaign_once()
    with pytest.raises(AnotherDaemonLeads, match="daemon:test:a leads"):
        once.start_oneshot()
    a.stop(release=True)
    once.start_oneshot()


def test_a_missing_lease_table_is_a_clear_error(make: Any, pg_server: str) -> None:
    elector = make("a", url=f"{pg_server}/postgres")
    with pytest.raises(LeaderElectionError, match="migrate"):
        elector.start()
