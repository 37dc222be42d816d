"""Host leases (``reconciler.shards``) against a real PostgreSQL, in one process.

Each "replica" is a ``HostShards`` with its own session, driven round by round; a replica dies when
its session closes and pauses when it stops renewing. These pin what the daemon relies on: the
hosts split fairly and never overlap, a dead replica's hosts are taken over without waiting for
the lease time, a paused one's once its leases expire, the fence refuses a replica that lost a
host, and a fenced transaction holds a takeover off until it ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from reconciler.shards import HostShards
from tests.integration.ha.support import query, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def hosts(ha_database: str) -> list[int]:
    """Four active hosts (the template's one, and three more)."""
    for index in range(3):
        query(
            ha_database,
            "INSERT INTO container_manager_executorhost (name, executor_type, connection_string,"
            " executor_config, is_active, health_status, health_message, max_concurrent_jobs,"
            " description, created_at) VALUES (%s, 'mock', '', '{}', true, 'unknown', '', 10, '', now())",
            [f"mock-{index}"],
        )
    return sorted(row[0] for row in query(ha_database, "SELECT id FROM container_manager_executorhost"))


@pytest.fixture
def make(ha_database: str) -> Iterator[Any]:
    made: list[HostShards] = []

    def factory(name: str, ttl: float = 2.0, settle: float = 0.0) -> HostShards:
        changes: list[tuple[set[int], set[int]]] = []
        shards = HostShards(
            name="test",
            holder=f"daemon:test:{name}",
            ttl=ttl,
            settle_seconds=settle,
            connect=lambda: psycopg.connect(ha_database, autocommit=True),
            on_change=lambda gained, lost: changes.append((gained, lost)),
        )
        shards.changes = changes  # type: ignore[attr-defined]
        made.append(shards)
        return shards

    yield factory
    for shards in made:
        shards.stop(release=False)


def rounds(*replicas: HostShards, times: int = 4) -> None:
    for _ in range(times):
        for replica in replicas:
            replica.round()


def test_two_replicas_split_the_hosts_and_never_overlap(make: Any, hosts: list[int]) -> None:
    a, b = make("a"), make("b")
    a.round()
    assert a.owned() == frozenset(hosts), "alone, a replica drives every host"
    b.round()  # b is a member now; a is above its fair share and hands hosts over
    rounds(a, b, times=4)
    assert len(a.owned()) == len(b.owned()) == 2
    assert a.owned().isdisjoint(b.owned()) and a.owned() | b.owned() == frozenset(hosts)
    rounds(a, b, times=3)
    assert len(a.owned()) == len(b.owned()) == 2, "stable once fair: no flapping"
    gained = set().union(*(g for g, _ in b.changes))  # type: ignore[attr-defined]
    assert gained == set(b.owned())


def test_a_dead_replicas_hosts_are_taken_over_without_waiting_for_the_lease(
    make: Any, hosts: list[int]
) -> None:
    a, b = make("a", ttl=30.0), make("b", ttl=30.0)
    a.round()
    assert a.owned() == frozenset(hosts)
    a._drop()  # the process died: its session is gone
    started = time.monotonic()
    b.round()
    assert b.owned() == frozenset(hosts), "taken at once, not after the 30 s lease"
    assert time.monotonic() - started < 5.0
    a.round()
    assert a.owned() == frozenset(), "a wakes up to find every lease renewed by someone else"
    assert set().union(*(lost for _, lost in a.changes)) == set(hosts)  # type: ignore[attr-defined]


def test_a_paused_replica_loses_its_hosts_when_its_leases_expire_and_is_fenced(
    make: Any, hosts: list[int], ha_database: str
) -> None:
    a, b = make("a", ttl=1.0), make("b", ttl=1.0)
    a.round()
    b.round()
    assert b.owned() == frozenset(), "a lives: its hosts are not free"
    time.sleep(1.1)  # a is paused: it renews nothing
    assert not a.owned(), "a's own clock already tells it the leases ran out"
    b.round()
    assert b.owned() == frozenset(hosts)
    held = a._held[hosts[0]]
    a._held[hosts[0]] = type(held)(held.epoch, float("inf"))  # even with a clock that disagrees:
    with psycopg.connect(ha_database) as conn, conn.cursor() as cursor:
        assert not a.fence([hosts[0]], cursor), "the fence reads the row: another replica holds it"
    with psycopg.connect(ha_database) as conn, conn.cursor() as cursor:
        assert b.fence(hosts, cursor)


def test_a_fenced_transaction_holds_off_a_takeover_until_it_ends(
    make: Any, hosts: list[int], ha_database: str
) -> None:
    a, b = make("a", ttl=3.0), make("b", ttl=3.0)
    a.round()
    writer = psycopg.connect(ha_database)
    try:
        assert a.fence([hosts[0]], writer.cursor())  # share-locked until the write commits
        a._drop()  # a dies while its write is in flight
        b._connect = lambda: psycopg.connect(ha_database, autocommit=True, options="-c lock_timeout=200")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            b.round()
        b._drop()
        writer.commit()  # the write lands while a still held the host...
        assert wait_until(lambda: (b.round(), hosts[0] in b.owned())[1], timeout=5.0), "...then b takes it"
    finally:
        writer.close()


def test_an_inactive_host_is_handed_back_and_a_released_host_is_free_at_once(
    make: Any, hosts: list[int], ha_database: str
) -> None:
    a, b = make("a", ttl=30.0), make("b", ttl=30.0)
    a.round()
    query(
        ha_database, "UPDATE container_manager_executorhost SET is_active = false WHERE id = %s", [hosts[-1]]
    )
    a.round()
    assert hosts[-1] not in a.owned()
    a.stop(release=True)
    b.round()
    assert b.owned() == frozenset(hosts[:-1]), "released leases are free at once"


def test_the_thread_renews_past_the_lease_time(make: Any, hosts: list[int]) -> None:
    a = make("a", ttl=1.0)
    a.start()
    assert wait_until(lambda: a.owned() == frozenset(hosts), timeout=3.0)
    time.sleep(1.5)
    assert a.owned() == frozenset(hosts), "renewed several times past the TTL"


def test_each_replica_knows_which_hosts_the_others_drive(make: Any, hosts: list[int]) -> None:
    """``others()``: where a claim may place unpinned jobs for another replica to claim."""
    a, b = make("a"), make("b")
    rounds(a, b, times=6)
    assert a.owned() and b.owned()
    assert (a.others(), b.others()) == (b.owned(), a.owned())
    b.stop()  # releases its leases: a sees them free, then takes them
    a.round()
    assert a.others() == frozenset()
