"""Several real ``process_jobs`` replicas on one PostgreSQL, sharing real Docker hosts.

The replicas split the executor hosts between them through host leases, and each drives the
jobs of its own hosts. A replica is killed (SIGKILL), paused (SIGSTOP, later SIGCONT) or stopped
(SIGTERM) while its containers run: the others must take its hosts over within the lease time,
adopt the running containers and finish every job, none lost and none launched twice. "Launched
twice" is checked three ways: one attempt per job in the database, one transition to
``launching`` per job in its history, and one Docker ``create`` event per container name (a name
can exist only once at a time, so a second launch would show up as a second create). The hosts
are several host rows on the local Docker daemon: what is shared is the driving, not the engine.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ha.support import (
    Cluster,
    CreateEvents,
    Replica,
    cli,
    create_events,
    query,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.slow]

#: short, to keep the tests fast; production default is 5 s.
LEASE = 3.0
#: time a replica may need beyond the lease: one renewal interval (TTL/5) plus scheduling slack.
SLACK = 2.0
#: hand-overs wait until every member has been up for this long (2 x the lease, see shards.py).
SETTLE = 2 * LEASE
COMMAND = "sh -c 'sleep 3; echo done'"


@pytest.fixture
def cluster(ha_database: str, instance: str, home: Path, busybox: str) -> Iterator[Cluster]:
    made = Cluster(ha_database, instance, home, LEASE)
    made.add_docker_hosts(3)  # four hosts with the template's one
    try:
        yield made
    finally:
        made.cleanup()


def _balanced(cluster: Cluster, replicas: list[Replica], hosts: int = 4) -> None:
    """Wait until the live replicas hold every host between them, as evenly as ceil allows."""

    def balanced() -> bool:
        owned = [r.hosts_owned() for r in replicas]
        if None in owned:
            return False
        counts = [int(n or 0) for n in owned]
        return sum(counts) == hosts and max(counts) - min(counts) <= 1

    assert wait_until(balanced, timeout=SETTLE * 4 + 10), (
        f"{[r.hosts_owned() for r in replicas]}\n{cluster.dump_logs()}"
    )
    holders = cluster.host_owners()
    assert len(holders) == hosts and len(set(holders.values())) == len(replicas), holders


def _wait_running(cluster: Cluster, at_least: int) -> None:
    assert wait_until(lambda: cluster.statuses()["running"] >= at_least, timeout=30), (
        f"{cluster.statuses()}\n{cluster.dump_logs()}"
    )


def _assert_each_job_ran_once(cluster: Cluster, events: CreateEvents, jobs: list[int]) -> None:
    assert wait_until(lambda: cluster.all_finished(len(jobs)), timeout=120), (
        f"{cluster.statuses()}\n{cluster.dump_logs()}"
    )
    url = cluster.database_url
    assert cluster.statuses() == {"completed": len(jobs)}, cluster.dump_logs()
    attempts = query(url, "SELECT id, attempts FROM container_manager_containerjob ORDER BY id")
    assert [a for _, a in attempts] == [1] * len(jobs)
    executions = query(
        url,
        "SELECT job_id, count(*), min(stdout), max(exit_code) FROM container_manager_containerexecution GROUP BY 1",
    )
    assert sorted(e[0] for e in executions) == sorted(jobs)
    assert all(count == 1 and out == "done\n" and code == 0 for _, count, out, code in executions), executions
    launching = query(
        url,
        "SELECT job_id, count(*) FROM container_manager_jobevent WHERE to_status = 'launching' GROUP BY 1",
    )
    assert sorted(launching) == [(j, 1) for j in sorted(jobs)]
    # Docker's stream delivers within milliseconds; give it a moment after the last job.
    assert wait_until(lambda: len(events.names) >= len(jobs), timeout=5)
    names = {f"cm-{cluster.instance}-{j}-1" for j in jobs}
    assert set(events.names) == names, sorted(events.names)
    assert max(events.names.values()) == 1, f"a container was created twice: {events.names.most_common(3)}"


def _nothing_left_behind(cluster: Cluster) -> None:
    from tests.integration.reconciler_docker.support import containers_of

    assert wait_until(lambda: not containers_of(cluster.instance), timeout=30), containers_of(
        cluster.instance
    )


def test_two_replicas_share_the_hosts_and_a_killed_ones_are_taken_over(
    cluster: Cluster, busybox: str
) -> None:
    with create_events(cluster.instance) as events:
        a = cluster.start("a")
        assert wait_until(lambda: a.hosts_owned() == 4, timeout=15), cluster.dump_logs()
        b = cluster.start("b")
        _balanced(cluster, [a, b])
        assert {a.role(), b.role()} == {"leader", "replica"}, "one of them also does the leader's duties"
        shown = json.loads(cli(cluster.env, "manage_jobs", "hosts", "--json").stdout)
        assert {row["owner"] for row in shown} == set(cluster.host_owners().values()), shown
        assert all(row["lease_expires_at"] for row in shown)
        jobs = cluster.submit(8, COMMAND, busybox)
        _wait_running(cluster, 6)
        used = query(
            cluster.database_url, "SELECT DISTINCT host_name FROM container_manager_containerexecution"
        )
        assert len(used) >= 3, f"jobs spread over the hosts of both replicas: {used}" + cluster.dump_logs()

        killed_at = time.monotonic()
        a.signal(signal.SIGKILL)
        # A killed replica's session disappears at once: its hosts are free without waiting for
        # the lease to expire.
        assert wait_until(lambda: b.hosts_owned() == 4, timeout=LEASE + SLACK), cluster.dump_logs()
        assert time.monotonic() - killed_at < LEASE + SLACK
        assert (b.metric("container_manager_host_lease_changes_total", 'change="gained"') or 0) >= 4
        jobs += cluster.submit(4, COMMAND, busybox)
        _assert_each_job_ran_once(cluster, events, jobs)
    _nothing_left_behind(cluster)
    assert "Traceback" not in b.log(), b.log()[-4000:]


def test_a_paused_replica_loses_its_hosts_then_writes_nothing_for_them(
    cluster: Cluster, busybox: str
) -> None:
    with create_events(cluster.instance) as events:
        replicas = [cluster.start(name) for name in ("a", "b", "c")]
        _balanced(cluster, replicas)
        jobs = cluster.submit(9, COMMAND, busybox)
        _wait_running(cluster, 6)
        paused = max(replicas, key=lambda r: r.hosts_owned() or 0)
        others = [r for r in replicas if r is not paused]
        stopped_at = time.monotonic()
        paused.signal(signal.SIGSTOP)
        # A paused replica keeps its session: its leases have to expire first.
        assert wait_until(
            lambda: sum(r.hosts_owned() or 0 for r in others) == 4, timeout=LEASE + SLACK + 5
        ), cluster.dump_logs()
        elapsed = time.monotonic() - stopped_at
        assert elapsed < LEASE + SLACK + 2, f"takeover took {elapsed:.1f} s"
        assert wait_until(lambda: cluster.all_finished(len(jobs)), timeout=90), cluster.dump_logs()

        # It wakes up to find its leases gone: it drives nothing it lost (the fence and its own
        # clock stop it), and either stays as a replica or, if it held the leader's lease, exits
        # 75 for its supervisor to restart it.
        paused.signal(signal.SIGCONT)
        time.sleep(LEASE)
        code = paused.proc.poll()
        assert code in (None, 75), paused.log()[-4000:]
        assert "Traceback" not in paused.log(), paused.log()[-4000:]
        jobs += cluster.submit(3, COMMAND, busybox)
        _assert_each_job_ran_once(cluster, events, jobs)
    _nothing_left_behind(cluster)


def test_sigterm_hands_the_hosts_over_at_once_and_leaves_containers_running(
    cluster: Cluster, busybox: str
) -> None:
    with create_events(cluster.instance) as events:
        a, b = cluster.start("a"), cluster.start("b")
        _balanced(cluster, [a, b])
        jobs = cluster.submit(6, "sh -c 'sleep 4; echo done'", busybox)
        _wait_running(cluster, 6)
        stopped_at = time.monotonic()
        a.signal(signal.SIGTERM)
        assert a.proc.wait(20) == 0, a.log()[-4000:]
        # The leases are released on the way out: no expiry to wait for.
        assert wait_until(lambda: b.hosts_owned() == 4, timeout=LEASE), cluster.dump_logs()
        assert time.monotonic() - stopped_at < LEASE + 1
        # The containers were left running (the jobs complete with exit 0 and their output).
        _assert_each_job_ran_once(cluster, events, jobs)
    _nothing_left_behind(cluster)


def test_random_kills_and_pauses_lose_nothing_and_launch_nothing_twice(
    cluster: Cluster, busybox: str
) -> None:
    """Three replicas, four hosts; every couple of seconds one replica is killed (and started
    again) or paused (and resumed), for half a minute, while jobs keep arriving."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with create_events(cluster.instance) as events:
        replicas = {name: cluster.start(name) for name in ("a", "b", "c")}
        jobs = cluster.submit(6, "sh -c 'sleep 2; echo done'", busybox)
        until = time.monotonic() + 30
        generation = 0
        while time.monotonic() < until:
            time.sleep(rng.uniform(1.0, 3.0))
            name = rng.choice(sorted(replicas))
            victim = replicas[name]
            if rng.random() < 0.5:
                victim.signal(signal.SIGKILL)
                victim.proc.wait(10)
                generation += 1
                replicas[name] = cluster.start(f"{name}{generation}")
            else:
                victim.signal(signal.SIGSTOP)
                time.sleep(rng.uniform(0.5, LEASE + 1))
                victim.signal(signal.SIGCONT)
                if victim.proc.poll() is not None:
                    generation += 1
                    replicas[name] = cluster.start(f"{name}{generation}")
            jobs += cluster.submit(2, "sh -c 'sleep 2; echo done'", busybox)
        for name, replica in list(replicas.items()):
            if replica.proc.poll() is not None:
                replicas[name] = cluster.start(f"{name}-final")
        _assert_each_job_ran_once(cluster, events, jobs)
    _nothing_left_behind(cluster)
    print(f"chaos seed {seed}: {len(jobs)} jobs, {generation} restarts")
