"""The daemon driving three real Docker hosts over TLS: placement, a host dying, a host coming back.

The daemon runs in a thread of the test process (``running_daemon``), on host rows written as
a user writes them; the hosts are real ``dockerd`` processes (``tests.support.dockerd``) that
the tests SIGKILL and restart. What the database says is checked against what each daemon
really runs, asked directly.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost
from tests.integration.multihost.support import attempts_per_host, containers_on, host_row
from tests.integration.reconciler_docker.support import make_job, running_daemon, wait_until
from tests.support.dockerd import DockerdHost

pytestmark = pytest.mark.docker

#: Runs until stopped; exits at once on SIGTERM (so a stop, or a restarting dockerd, ends it fast).
HOLD = "sh -c 'trap \"exit 143\" TERM; while true; do sleep 0.2; done'"


def configure(hosts: list[DockerdHost], capacities: tuple[int, ...]) -> None:
    """One host row per harness host, with these ``max_concurrent_jobs``."""
    for host, capacity in zip(hosts, capacities, strict=True):
        host_row(host, capacity=capacity)


def running_per_host(jobs: list[ContainerJob]) -> Counter[str]:
    return attempts_per_host(job__in=jobs, status="running")


def health(name: str) -> str:
    return str(ExecutorHost.objects.get(name=name).health_status)


def cancel_all(jobs: list[ContainerJob]) -> None:
    for job in jobs:
        job.cancel()


def finished(jobs: list[ContainerJob]) -> bool:
    return not ContainerJob.objects.filter(pk__in=[j.pk for j in jobs]).unfinished().exists()


def statuses(jobs: list[ContainerJob]) -> set[str]:
    return set(ContainerJob.objects.filter(pk__in=[j.pk for j in jobs]).values_list("status", flat=True))


def test_unpinned_jobs_go_to_the_hosts_with_the_most_free_slots(
    transactional_db: Any, tls_hosts: list[DockerdHost], instance: str
) -> None:
    h1, h2, h3 = tls_hosts
    configure(tls_hosts, (3, 2, 1))
    with running_daemon(workers=4):
        first = [make_job(None, HOLD) for _ in range(3)]
        wait_until(lambda: sum(running_per_host(first).values()) == 3, 60, "3 jobs running")
        # The largest share of slots free wins, then more free slots: h1 (3 of 3), then h2 (2 of 2
        # against h1's 2 of 3), then h3 (1 of 1): a burst spreads in proportion to capacity.
        assert running_per_host(first) == {"h1": 1, "h2": 1, "h3": 1}
        more = [make_job(None, HOLD) for _ in range(4)]
        held = first + more
        wait_until(lambda: sum(running_per_host(held).values()) == 6, 60, "6 jobs running")
        assert running_per_host(held) == {"h1": 3, "h2": 2, "h3": 1}
        # Each daemon really runs what the database says it does.
        for host, count in ((h1, 3), (h2, 2), (h3, 1)):
            assert len(containers_on(host, instance, running=True)) == count, host.name
        (waiting,) = ContainerJob.objects.filter(pk__in=[j.pk for j in held], status="pending")
        # A slot frees up on h3 only: the waiting job goes there.
        on_h3 = ContainerExecution.objects.get(job__in=held, host_name="h3", status="running").job
        on_h3.cancel()
        wait_until(
            lambda: ContainerExecution.objects.filter(job=waiting, status="running").exists(),
            60,
            "the waiting job to run",
        )
        assert ContainerExecution.objects.get(job=waiting).host_name == "h3"
        cancel_all(held)
        wait_until(lambda: finished(held), 60, "every job to end")
    assert statuses(held) == {"cancelled"}
    for host in tls_hosts:
        assert containers_on(host, instance, running=True) == [], host.name


def test_a_killed_host_is_marked_unhealthy_and_comes_back_when_restarted(
    transactional_db: Any, tls_hosts: list[DockerdHost], instance: str
) -> None:
    h1 = tls_hosts[0]
    configure(tls_hosts, (3, 1, 1))  # h1 has the most free slots
    with running_daemon(workers=4):
        victim = make_job(None, HOLD, max_retries=0)  # its end is checked below, not a retry
        wait_until(lambda: running_per_host([victim]) == {"h1": 1}, 60, "a job running on h1")

        h1.kill()
        wait_until(lambda: health("h1") == "unhealthy", 30, "h1 to be marked unhealthy")
        message = ExecutorHost.objects.get(name="h1").health_message
        assert h1.base_url in message and "Traceback" not in message, message

        # New jobs go to the live hosts only, and finish there.
        elsewhere = [make_job(None, "echo elsewhere") for _ in range(3)]
        wait_until(lambda: finished(elsewhere), 60, "the new jobs to finish on h2 and h3")
        assert statuses(elsewhere) == {"completed"}
        assert set(attempts_per_host(job__in=elsewhere)) <= {"h2", "h3"}

        # Restarted (same port, same data root), it is probed at the next resync and used again.
        h1.start()
        wait_until(lambda: health("h1") == "healthy", 30, "h1 to be healthy again")
        # h2 and h3 have one slot each: of four jobs held running, at least two must run on h1.
        back = [make_job(None, HOLD) for _ in range(4)]
        wait_until(lambda: sum(running_per_host(back).values()) == 4, 60, "the jobs after the restart to run")
        assert running_per_host(back) == {"h1": 2, "h2": 1, "h3": 1}
        assert len(containers_on(h1, instance, running=True)) >= 2
        cancel_all(back)
        wait_until(lambda: finished(back), 60, "the jobs after the restart to end")
        # The restarted dockerd stopped the container it found running: the attempt ended.
        wait_until(lambda: finished([victim]), 60, "the attempt on the killed host to end")
    (only,) = ContainerExecution.objects.filter(job=victim)
    assert (only.host_name, only.status) == ("h1", "failed"), (only.status, only.message)
    # Stopped by the restarted daemon (SIGTERM: the job's trap exits 143), or gone with it.
    assert (only.reason, only.exit_code) in (("exit_code", 143), ("lost", None)), (only.reason, only.message)


def test_a_killed_hosts_running_attempts_are_lost_and_retried_on_another_host(
    transactional_db: Any, tls_hosts: list[DockerdHost], instance: str
) -> None:
    """A host that stays dead must not hold its jobs until their own timeout (here 10 minutes)."""
    h1 = tls_hosts[0]
    configure(tls_hosts, (3, 1, 1))  # h1 has the most free slots
    with running_daemon(workers=4):
        job = make_job(None, HOLD, max_retries=1, timeout_seconds=600)
        wait_until(lambda: running_per_host([job]) == {"h1": 1}, 60, "the job running on h1")
        h1.kill()

        def retried_elsewhere() -> bool:
            attempts = list(ContainerExecution.objects.filter(job=job).order_by("attempt"))
            return (
                len(attempts) == 2
                and (attempts[0].status, attempts[0].reason) == ("failed", "lost")
                and attempts[1].host_name in ("h2", "h3")
                and attempts[1].status == "running"
            )

        wait_until(retried_elsewhere, 20, "the attempt on h1 to be lost and retried on h2 or h3")
        job.cancel()
        wait_until(lambda: finished([job]), 30, "the job to end")


def test_an_idle_host_killed_is_marked_unhealthy_before_jobs_are_placed_on_it(
    transactional_db: Any, tls_hosts: list[DockerdHost], instance: str
) -> None:
    """A host that dies with nothing on it is found by the host step's probe, before it takes the
    next jobs (it has the most free slots)."""
    h1 = tls_hosts[0]
    configure(tls_hosts, (3, 1, 1))  # h1 has the most free slots
    with running_daemon(workers=4):
        wait_until(lambda: health("h1") == "healthy", 30, "h1 to be probed")
        h1.kill()
        wait_until(lambda: health("h1") == "unhealthy", 10, "h1 to be marked unhealthy")
        jobs = [make_job(None, "echo elsewhere") for _ in range(2)]
        wait_until(lambda: finished(jobs), 60, "the jobs to finish")
    assert attempts_per_host(job__in=jobs) == {"h2": 1, "h3": 1}
