"""Several real ``process_jobs`` replicas on one PostgreSQL, running real Docker containers.

The leader is killed (SIGKILL), paused (SIGSTOP, later SIGCONT) or stopped (SIGTERM) while
its containers run. A standby must take over within the lease time, adopt the running
containers, and finish every job: none lost, and none launched twice. "Launched twice" is
checked three ways: one attempt per job in the database, one transition to ``launching`` per
job in its history, and one Docker ``create`` event per container name (a name can exist only
once at a time, so a second launch would show up as a second create).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ha.support import Cluster, CreateEvents, Replica, create_events, query, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.slow]

#: short, to keep the tests fast; production default is 5 s.
LEASE = 3.0
#: time a standby may need beyond the lease: one retry interval (TTL/5) plus scheduling slack.
SLACK = 2.0
COMMAND = "sh -c 'sleep 3; echo done'"


@pytest.fixture
def cluster(ha_database: str, instance: str, home: Path, busybox: str) -> Iterator[Cluster]:
    made = Cluster(ha_database, instance, home, LEASE)
    try:
        yield made
    finally:
        made.cleanup()


def _first_leader(cluster: Cluster, names: list[str]) -> tuple[Replica, list[Replica]]:
    """Start the first replica, wait until it leads, then start the standbys."""
    first = cluster.start(names[0])
    leader = cluster.wait_leader([first], timeout=30)
    assert leader is first, cluster.dump_logs()
    standbys = [cluster.start(name) for name in names[1:]]
    assert wait_until(lambda: all(s.role() == "standby" for s in standbys), timeout=30), cluster.dump_logs()
    assert first.role() == "leader"
    return first, standbys


def _wait_running(cluster: Cluster, at_least: int) -> None:
    assert wait_until(lambda: cluster.statuses()["running"] >= at_least, timeout=30), (
        f"{cluster.statuses()}\n{cluster.dump_logs()}"
    )


def _takeover(cluster: Cluster, standbys: list[Replica], since: float) -> tuple[Replica, float]:
    leader = cluster.wait_leader(standbys, timeout=LEASE + SLACK + 5)
    elapsed = time.monotonic() - since
    assert leader is not None, f"no standby took over\n{cluster.dump_logs()}"
    print(f"takeover by {leader.name} after {elapsed:.2f} s")  # shown with pytest -rP
    return leader, elapsed


def _assert_each_job_ran_once(cluster: Cluster, events: CreateEvents, jobs: list[int]) -> None:
    assert wait_until(lambda: cluster.all_finished(len(jobs)), timeout=90), (
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


def _metric(replica: Replica, name: str) -> float | None:
    _, body = replica.get("/metrics")
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_sigkill_of_the_leader_two_replicas(cluster: Cluster, busybox: str) -> None:
    with create_events(cluster.instance) as events:
        leader, (standby,) = _first_leader(cluster, ["a", "b"])
        assert _metric(leader, "container_manager_leader") == 1.0
        assert _metric(standby, "container_manager_leader") == 0.0
        jobs = cluster.submit(8, COMMAND, busybox)
        _wait_running(cluster, 3)

        killed_at = time.monotonic()
        leader.signal(signal.SIGKILL)
        new, elapsed = _takeover(cluster, [standby], killed_at)
        # A killed leader's session disappears at once: no need to wait for the lease to expire.
        assert elapsed < LEASE, f"takeover took {elapsed:.1f} s"
        assert wait_until(lambda: new.role() == "leader", timeout=5)
        assert _metric(new, "container_manager_leader") == 1.0

        jobs += cluster.submit(4, COMMAND, busybox)  # the new leader also launches new work
        _assert_each_job_ran_once(cluster, events, jobs)
    assert "Traceback" not in standby.log(), standby.log()[-4000:]


def test_sigstop_then_sigkill_three_replicas(cluster: Cluster, busybox: str) -> None:
    with create_events(cluster.instance) as events:
        paused, standbys = _first_leader(cluster, ["a", "b", "c"])
        jobs = cluster.submit(9, COMMAND, busybox)
        _wait_running(cluster, 3)

        stopped_at = time.monotonic()
        paused.signal(signal.SIGSTOP)
        second, elapsed = _takeover(cluster, standbys, stopped_at)
        # A paused leader keeps its session: the lease has to expire first.
        assert elapsed < LEASE + SLACK, f"takeover took {elapsed:.1f} s"
        third = next(r for r in standbys if r is not second)
        assert wait_until(lambda: second.role() == "leader" and third.role() == "standby", timeout=5)
        assert wait_until(lambda: cluster.all_finished(len(jobs)), timeout=60), cluster.dump_logs()

        # The former leader wakes up, finds its lease gone, writes nothing and exits (75) for a restart.
        paused.signal(signal.SIGCONT)
        assert paused.proc.wait(15) == 75, paused.log()[-4000:]
        records = paused.events()
        assert any(r.get("event") == "leadership lost" for r in records), paused.log()[-4000:]
        assert "Traceback" not in paused.log(), paused.log()[-4000:]
        assert cluster.holder_pid() == second.pid

        killed_at = time.monotonic()
        second.signal(signal.SIGKILL)
        last, elapsed = _takeover(cluster, [third], killed_at)
        assert last is third
        assert elapsed < LEASE, f"second takeover took {elapsed:.1f} s"
        jobs += cluster.submit(3, COMMAND, busybox)
        _assert_each_job_ran_once(cluster, events, jobs)
    epochs = query(cluster.database_url, "SELECT epoch FROM container_manager_leaderlease")
    assert epochs == [(3,)], "three leaders, three epochs"


def test_sigterm_hands_over_and_leaves_containers_running(cluster: Cluster, busybox: str) -> None:
    with create_events(cluster.instance) as events:
        leader, (standby,) = _first_leader(cluster, ["a", "b"])
        jobs = cluster.submit(4, "sh -c 'sleep 4; echo done'", busybox)
        _wait_running(cluster, 4)

        stopped_at = time.monotonic()
        leader.signal(signal.SIGTERM)
        assert leader.proc.wait(20) == 0, leader.log()[-4000:]
        new, elapsed = _takeover(cluster, [standby], stopped_at)
        # The lease is released on the way out: no expiry to wait for.
        assert elapsed < LEASE, f"takeover took {elapsed:.1f} s"
        assert new is standby
        # The containers were left running (the jobs complete with exit 0 and their output),
        # adopted by the new leader.
        _assert_each_job_ran_once(cluster, events, jobs)
    assert any(r.get("event") == "leadership released" for r in leader.events()), leader.log()[-4000:]
    assert not any(r.get("event") == "job finished" for r in leader.events()), (
        "nothing finished before the stop"
    )
