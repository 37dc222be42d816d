"""Unpinned jobs with several replicas: placed over every driven host, claimed by the host's replica.

Two reconcilers stand for two replicas; a fixed ``HostScope`` says which hosts each drives (the
lease machinery itself is tested on PostgreSQL in ``tests/integration/ha``). A burst is spread as
one daemon would spread it: each replica claims the jobs placed on its own hosts and leaves the
rest, waking the other replicas, instead of taking everything its own slots could hold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Any

import pytest
from django.db.models import Q

from container_manager.models import ContainerJob, ExecutorHost
from reconciler import notify
from reconciler.step import Reconciler
from tests.mockworld import MockWorld

pytestmark = pytest.mark.django_db

FIELDS = {"image": "busybox", "command": "sleep 5", "memory_limit": 64, "cpu_limit": 0.5}


class Fixed:
    """A replica that drives ``mine`` while another drives ``theirs``."""

    kind = "fixed"

    def __init__(self, mine: Collection[int], theirs: Collection[int]) -> None:
        self.mine, self.theirs = frozenset(mine), frozenset(theirs)

    def start(self) -> None: ...

    def stop(self, *, release: bool = True) -> None: ...

    def owns(self, host_pk: int | None, name: str | None = None) -> bool:
        return host_pk in self.mine

    def host_q(self, prefix: str = "") -> Q:
        return Q(**{f"{prefix}pk__in": sorted(self.mine)})

    def others(self) -> frozenset[int]:
        return self.theirs

    def describe(self) -> str:
        return f"drives {sorted(self.mine)}"


@pytest.fixture
def hosts(db: Any) -> list[ExecutorHost]:
    return [
        ExecutorHost.objects.create(name=f"mock-{i}", executor_type="mock", max_concurrent_jobs=10)
        for i in range(4)
    ]


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(notify, "wake_claimers", lambda: calls.append(1))
    return calls


def replicas(world: MockWorld, hosts: list[ExecutorHost]) -> tuple[Reconciler, Reconciler]:
    a_hosts, b_hosts = [h.pk for h in hosts[:2]], [h.pk for h in hosts[2:]]
    return tuple(  # type: ignore[return-value]
        Reconciler(actor=f"daemon:{name}", executor_for=world.executor_for, clock=world.clock, hosts=scope)
        for name, scope in (("a", Fixed(a_hosts, b_hosts)), ("b", Fixed(b_hosts, a_hosts)))
    )


def placed_on(claimed: Any) -> Counter[str]:
    return Counter(snap.execution.host_name for snap in claimed.snapshots)


def test_a_burst_is_spread_over_both_replicas_hosts(
    mock_world: MockWorld, hosts: list[ExecutorHost], wakes: list[int]
) -> None:
    jobs = [ContainerJob.objects.create(**FIELDS) for _ in range(8)]
    a, b = replicas(mock_world, hosts)
    first = a.claim()
    assert placed_on(first) == {"mock-0": 2, "mock-1": 2}, "a takes its share, not all it could hold"
    assert first.passed_on == 4 and wakes == [1], "the rest is left to b, which is woken"
    assert ContainerJob.objects.filter(status="pending").count() == 4
    second = b.claim()
    assert placed_on(second) == {"mock-2": 2, "mock-3": 2}
    assert second.passed_on == 0 and wakes == [1], "nothing left for anyone: no wake-up"
    claimed = {s.job.pk for s in first.snapshots} | {s.job.pk for s in second.snapshots}
    assert claimed == {j.pk for j in jobs}


def test_a_job_pinned_to_another_replicas_host_is_neither_claimed_nor_passed_on(
    mock_world: MockWorld, hosts: list[ExecutorHost], wakes: list[int]
) -> None:
    pinned = ContainerJob.objects.create(**FIELDS, docker_host=hosts[3])
    a, b = replicas(mock_world, hosts)
    claimed = a.claim()
    assert claimed.snapshots == [] and claimed.passed_on == 0 and wakes == []
    assert [s.job.pk for s in b.claim().snapshots] == [pinned.pk]


def test_hosts_another_replica_cannot_use_take_nothing(
    mock_world: MockWorld, hosts: list[ExecutorHost], wakes: list[int]
) -> None:
    """Its hosts are inactive or full: a replica with free slots runs the whole burst itself."""
    ExecutorHost.objects.filter(pk=hosts[2].pk).update(is_active=False)
    ExecutorHost.objects.filter(pk=hosts[3].pk).update(max_concurrent_jobs=1)
    ContainerJob.objects.create(**FIELDS, docker_host=hosts[3])
    b = replicas(mock_world, hosts)[1]
    assert len(b.claim().snapshots) == 1, "b fills its one free slot"
    for _ in range(6):
        ContainerJob.objects.create(**FIELDS)
    a = replicas(mock_world, hosts)[0]
    claimed = a.claim()
    assert placed_on(claimed) == {"mock-0": 3, "mock-1": 3} and claimed.passed_on == 0 and wakes == []


def test_one_replica_alone_claims_everything_it_can_hold(
    mock_world: MockWorld, hosts: list[ExecutorHost], wakes: list[int]
) -> None:
    for _ in range(8):
        ContainerJob.objects.create(**FIELDS)
    alone = Reconciler(
        actor="daemon:alone",
        executor_for=mock_world.executor_for,
        clock=mock_world.clock,
        hosts=Fixed([h.pk for h in hosts], []),
    )
    claimed = alone.claim()
    assert sum(placed_on(claimed).values()) == 8 and claimed.passed_on == 0 and wakes == []
