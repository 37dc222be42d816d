"""The daemon SIGKILLed at random points while it launches jobs, restarted, again and again.

This is the write-ahead invariant tested the hard way (DESIGN.md section 4, invariants 1-4):
``process_jobs`` runs as a real subprocess on an SQLite file, is killed with SIGKILL a random
0-1.5 s after it reports it started, and is started again; at the end one run with
``--until-idle`` finishes the work. Then:

* every job reached exactly one terminal state, ``completed``, on its first attempt (a daemon
  crash is not a job failure: the containers keep running and are adopted);
* Docker's own event log shows at most one container ever *created* per (job, attempt): a
  killed launch is resumed (the container adopted), never repeated;
* ``docker ps -a`` shows nothing left with this run's instance label.

The random seed is printed on failure and can be fixed with ``CM_CRASH_SEED``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from executors.types import LABEL_INSTANCE
from tests.integration.reconciler_docker.support import (
    IMAGE,
    REPO,
    cli,
    cm_env,
    containers_of,
    docker_api,
    kill_process,
    run_cli,
    wait_until,
)

# No Django test database here (subprocesses on their own SQLite files): the PostgreSQL pass skips it.
pytestmark = [pytest.mark.docker, pytest.mark.no_db]

JOBS = 24
KILLS = 6
TERMINAL = ("completed", "failed", "timeout", "cancelled")
LIVE_ATTEMPTS = (
    "SELECT count(*) FROM container_manager_containerexecution WHERE status IN ('launching', 'running')"
)

SEED_SCRIPT = """
from container_manager.models import ContainerJob, ExecutorHost
host = ExecutorHost.objects.create(name="local-docker", executor_type="docker", max_concurrent_jobs=4)
for i in range({jobs}):
    ContainerJob.objects.create(
        image="{image}", command="sh -c 'sleep 0.4; echo job-%d'" % i, docker_host=host,
        memory_limit=32, cpu_limit=0.5, timeout_seconds=120, max_retries=0,
    )
"""


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def start_daemon(env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                *cli(),
                "process_jobs",
                "--workers",
                "4",
                "--poll-interval",
                "0.1",
                "--resync-interval",
                "1",
                "--metrics-port",
                "0",
                "--log-format",
                "json",
                *extra,
            ],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for_start(proc: subprocess.Popen[bytes], log: Path, starts_before: int) -> None:
    """Wait until the daemon logs its start (its ``starts_before + 1``-th in the log) or exits."""

    def started() -> bool:
        return log.read_text(errors="replace").count('"daemon started"') > starts_before or (
            proc.poll() is not None
        )

    wait_until(started, 30, f"daemon start number {starts_before + 1}")


def test_daemon_sigkilled_at_random_points_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, busybox_image: str, cleanup_instances: Any
) -> None:
    seed = int(os.environ.get("CM_CRASH_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    instance = f"crash{uuid4().hex[:8]}"
    cleanup_instances(instance, None)
    env = cm_env(tmp_path, instance)
    db = tmp_path / "db.sqlite3"
    run_cli(env, "migrate", "--noinput")
    run_cli(env, "shell", "-c", SEED_SCRIPT.format(jobs=JOBS, image=IMAGE))
    since = time.time() - 1
    log = tmp_path / "daemon.log"
    live_at_kill = []
    for round_number in range(KILLS):
        proc = start_daemon(env, log)
        try:
            wait_for_start(proc, log, round_number)
            assert proc.poll() is None, f"the daemon exited early (seed {seed}):\n{log.read_text()[-3000:]}"
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            kill_process(proc)
        # What the killed daemon left in flight: attempts claimed or started, not yet finished.
        live_at_kill.append(query(db, LIVE_ATTEMPTS)[0][0])
    final = start_daemon(env, log, "--until-idle")
    try:
        final.wait(120)
    finally:
        kill_process(final)
    assert final.returncode == 0, f"the last daemon run failed (seed {seed}):\n{log.read_text()[-3000:]}"
    until = time.time() + 1

    context = f"seed {seed}, live attempts at each kill {live_at_kill}"
    assert sum(live_at_kill) > 0, f"no kill hit a daemon with work in flight ({context})"

    jobs = query(db, "SELECT id, status, attempts, exit_code FROM container_manager_containerjob ORDER BY id")
    assert len(jobs) == JOBS
    assert [(status, attempts, code) for _, status, attempts, code in jobs] == [("completed", 1, 0)] * JOBS, (
        context
    )
    terminal_events = Counter(
        job_id
        for (job_id,) in query(
            db,
            "SELECT job_id FROM container_manager_jobevent WHERE to_status IN "
            f"({','.join(repr(s) for s in TERMINAL)})",
        )
    )
    assert terminal_events == Counter({job_id: 1 for job_id, *_ in jobs}), context
    outputs = query(
        db,
        "SELECT j.command, e.stdout, e.cleaned_up FROM container_manager_containerexecution e "
        "JOIN container_manager_containerjob j ON j.id = e.job_id",
    )
    assert len(outputs) == JOBS
    for command, stdout, cleaned_up in outputs:
        assert stdout == command.split("echo ")[1].rstrip("'") + "\n" and cleaned_up, context

    api = docker_api()
    try:
        created = [
            event["Actor"]["Attributes"]["name"]
            for event in api.events(
                since=since,
                until=until,
                filters={"type": "container", "event": "create", "label": f"{LABEL_INSTANCE}={instance}"},
                decode=True,
            )
        ]
    finally:
        api.close()
    expected = {f"cm-{instance}-{job_id}-1" for job_id, *_ in jobs}
    duplicates = [name for name, count in Counter(created).items() if count > 1]
    assert not duplicates, f"containers created twice: {duplicates} ({context})"
    assert set(created) == expected, context
    assert containers_of(instance) == [], f"containers left behind ({context})"
