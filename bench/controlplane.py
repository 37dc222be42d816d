#!/usr/bin/env python3
"""The control plane's own cost per job: the reconciler with the mock executor, no container engine.

Why this exists: on real Docker the engine's CPU hides the daemon's, yet the daemon's cost per
job is what caps one daemon's throughput whatever the backends could take (DESIGN.md section 8:
<= 8 queries and <= 10 ms of daemon CPU per whole job lifecycle, >= 100 jobs/s, constant with
100k finished jobs in the table). So this script takes the engine out: H mock hosts, N job rows
inserted at once, a real ``Daemon`` run until idle in a child process of its own, and it prints

* jobs/s: N / the daemon's wall time from start to idle (every job claimed, run, recorded and
  cleaned up);
* queries/job: every SQL statement the daemon's connections executed, divided by N;
* daemon CPU/job: the child's user + system CPU seconds over the run, divided by N;
* peak RSS of the daemon process;
* PostgreSQL's CPU/job (its server processes on this machine) and how busy the whole machine
  was: on 2 cores shared with the database, the point where more replicas stop helping.

``--history K`` first loads K finished jobs (each with its attempt and history rows), so the
figures can be compared with and without history. ``--database-url`` takes a PostgreSQL server
URL: a fresh database is created on that server for the run and dropped afterwards. Without it a
fresh SQLite file in a temporary directory is used.

A benchmark is a script, never a timed assertion in a test. Results: BENCHMARKS.md.

Usage: .venv/bin/python bench/controlplane.py [--jobs 1000] [--hosts 4] [--capacity 10]
       [--workers 4] [--history 0] [--database-url postgres://u@127.0.0.1:5432/postgres]
       [--command true] [--rounds 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.measure import machine_snapshot, machine_use  # noqa: E402  (the repository, just added)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per round (default 1000)")
    parser.add_argument("--hosts", type=int, default=4, help="mock executor hosts (default 4)")
    parser.add_argument("--capacity", type=int, default=10, help="max_concurrent_jobs per host (default 10)")
    parser.add_argument("--workers", type=int, default=4, help="daemon workers (default 4)")
    parser.add_argument("--history", type=int, default=0, help="finished jobs loaded first (default 0)")
    parser.add_argument("--command", default="true", help="each job's command (mock script; default true)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; medians are reported (default 1)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server (a fresh database is created on it); default: a temporary SQLite file",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="daemon replicas sharing the hosts through host leases (more than 1 needs PostgreSQL)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    # Internal: each phase runs in a child process of its own (the daemon's figures are its own).
    parser.add_argument(
        "--phase", choices=("prepare", "insert", "daemon", "replica", "check"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def setup_django(database_url: str, home: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["CONTAINER_MANAGER_HOME"] = home
    os.environ["DJANGO_SETTINGS_MODULE"] = "container_manager.settings"
    import django

    django.setup()
    from container_manager.logconfig import configure

    configure("json", "WARNING")


# The daemon, in a child process -------------------------------------------------------------


def count_statements() -> dict[str, int]:
    """Count every SQL statement this process's connections execute (the daemon's, here)."""
    from django.db.backends.signals import connection_created

    counter = {"queries": 0}

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if threading.get_ident() != counter.get("harness_thread"):
            counter["queries"] += 1
        return execute(sql, params, many, context)

    def install(sender: Any, connection: Any, **kwargs: Any) -> None:
        # Fired again when a connection object reconnects: count each statement once.
        if count not in connection.execute_wrappers:
            connection.execute_wrappers.append(count)

    connection_created.connect(install, weak=False)  # a local function: keep it alive
    from django.db import connections

    for conn in connections.all():
        conn.close()
    return counter


def run_daemon(args: argparse.Namespace) -> dict[str, Any]:
    """Run a daemon until no job is left; report its wall time, CPU, SQL statements and peak RSS."""
    counter = count_statements()
    from reconciler.daemon import Daemon, DaemonOptions

    daemon = Daemon(DaemonOptions(workers=args.workers, until_idle=True, startup_wait_seconds=0))
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    machine_before = machine_snapshot()
    started = time.perf_counter()
    code = daemon.run()
    wall = time.perf_counter() - started
    machine = machine_use(machine_before, machine_snapshot())
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        **machine,
        "exit_code": code,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "queries": counter["queries"],
        "peak_rss_mb": cpu_after.ru_maxrss / 1024,
    }


LEASE_SECONDS = 2.0


def run_replica(args: argparse.Namespace) -> dict[str, Any]:
    """One of several replicas: start, take a share of the hosts, then at the go signal work
    until no job is left; figures count from the go signal."""
    counter = count_statements()
    from reconciler.daemon import Daemon, DaemonOptions

    daemon = Daemon(
        DaemonOptions(
            workers=args.workers, leader_election="auto", lease_seconds=LEASE_SECONDS, startup_wait_seconds=0
        )
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    go = os.environ["CM_BENCH_GO"]
    while not os.path.exists(go):
        time.sleep(0.01)
    counter["queries"] = 0
    # The loop below asks the database whether work is left: its statements are not the replica's.
    counter["harness_thread"] = threading.get_ident()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    machine_before = machine_snapshot()
    while not daemon._idle():
        time.sleep(0.02)
    finished = time.time()
    machine = machine_use(machine_before, machine_snapshot())
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    queries = counter["queries"]
    daemon.request_stop()
    thread.join(60)
    return {
        **machine,
        "finished_at": finished,
        "cpu_seconds": (cpu_after.ru_utime - cpu_before.ru_utime)
        + (cpu_after.ru_stime - cpu_before.ru_stime),
        "queries": queries,
        "peak_rss_mb": cpu_after.ru_maxrss / 1024,
    }


def wait_balanced(url: str, replicas: int, hosts: int, timeout: float = 60.0) -> None:
    """Until the replicas hold every host between them, evenly (no one two more than another)."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        while time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT holder, count(*) FROM container_manager_leaderlease"
                " WHERE name LIKE '%:host:%' AND expires_at > clock_timestamp() GROUP BY holder"
            ).fetchall()
            counts = [n for _, n in rows]
            if len(counts) == replicas and sum(counts) == hosts and max(counts) - min(counts) <= 1:
                time.sleep(2 * LEASE_SECONDS)  # and stays so: no hand-over in flight
                return
            time.sleep(0.2)
    raise SystemExit(f"the replicas did not share the hosts out within {timeout:g} s: {rows}")


def run_replicas(args: argparse.Namespace, env: dict[str, str], url: str, home: str) -> dict[str, Any]:
    go = os.path.join(home, "go")
    argv = [sys.executable, __file__, "--phase", "replica", "--workers", str(args.workers)]
    children = [
        subprocess.Popen(
            argv, env={**env, "CM_BENCH_GO": go}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(args.replicas)
    ]
    try:
        wait_balanced(url, args.replicas, args.hosts)
        job_ids = phase(args, "insert", env)["job_ids"]
        started = time.time()
        with open(go, "w"):
            pass
        reports = []
        for child_proc in children:
            out, err = child_proc.communicate(timeout=600)
            if child_proc.returncode != 0:
                raise SystemExit(f"a replica failed:\n{err[-4000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child_proc in children:
            if child_proc.poll() is None:
                child_proc.kill()
    # The machine from the go signal to the last replica's end: what the last one to finish saw.
    last = max(reports, key=lambda r: r["finished_at"])
    return {
        "machine_busy_percent": last["machine_busy_percent"],
        "postgres_cpu_seconds": last["postgres_cpu_seconds"],
        "job_ids": job_ids,
        "exit_code": 0,
        "wall_seconds": max(r["finished_at"] for r in reports) - started,
        "cpu_seconds": sum(r["cpu_seconds"] for r in reports),
        "queries": sum(r["queries"] for r in reports),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
    }


# Setup in the parent --------------------------------------------------------------------------


def fresh_postgres(server_url: str) -> tuple[str, str]:
    """Create an empty database on the server; returns (its URL, its name)."""
    import psycopg

    name = f"cm_bench_{uuid4().hex[:10]}"
    parts = urlsplit(server_url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}")), name


def drop_postgres(server_url: str, name: str) -> None:
    import psycopg

    admin = urlunsplit(urlsplit(server_url)._replace(path="/postgres"))
    with psycopg.connect(admin.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_history(count: int) -> None:
    """``count`` finished jobs with one cleaned-up attempt and three history rows each."""
    from datetime import timedelta

    from django.utils import timezone

    from container_manager.models import ContainerExecution, ContainerJob, JobEvent

    now = timezone.now() - timedelta(days=1)
    batch = 5000
    for start in range(0, count, batch):
        size = min(batch, count - start)
        jobs = ContainerJob.objects.bulk_create(
            ContainerJob(
                image="busybox:latest",
                command="true",
                status="completed",
                memory_limit=64,
                cpu_limit=0.5,
                timeout_seconds=60,
                attempts=1,
                exit_code=0,
                created_at=now,
                started_at=now,
                finished_at=now,
            )
            for _ in range(size)
        )
        ContainerExecution.objects.bulk_create(
            ContainerExecution(
                job_id=job.pk,
                attempt=1,
                host_name="history",
                executor_type="mock",
                container_name=f"cm-history-{job.pk}-1",
                container_id=f"history{job.pk}",
                status="completed",
                exit_code=0,
                created_at=now,
                started_at=now,
                finished_at=now,
                cleaned_up=True,
            )
            for job in jobs
        )
        JobEvent.objects.bulk_create(
            JobEvent(job_id=job.pk, at=now, attempt=1, from_status=a, to_status=b, actor="history")
            for job in jobs
            for a, b in (("pending", "launching"), ("launching", "running"), ("running", "completed"))
        )


def prepare(args: argparse.Namespace) -> list[int]:
    from django.core.management import call_command

    from container_manager.models import ExecutorHost

    call_command("migrate", verbosity=0)
    for index in range(args.hosts):
        ExecutorHost.objects.create(
            name=f"mock-{index}", executor_type="mock", max_concurrent_jobs=args.capacity
        )
    if args.history:
        load_history(args.history)
    return [] if args.replicas > 1 else insert(args)


def insert(args: argparse.Namespace) -> list[int]:
    from container_manager.models import ContainerJob

    jobs = ContainerJob.objects.create_many(
        [
            ContainerJob(image="busybox:latest", command=args.command, memory_limit=64, cpu_limit=0.5)
            for _ in range(args.jobs)
        ]
    )
    return [job.pk for job in jobs]


def check(job_ids: list[int]) -> dict[str, int]:
    """Every job finished once: completed, one attempt, its container cleaned up."""
    from django.db.models import Count

    from container_manager.models import ContainerExecution, ContainerJob

    statuses = dict(
        ContainerJob.objects.filter(pk__in=job_ids)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    attempts = ContainerExecution.objects.filter(job_id__in=job_ids).count()
    dirty = ContainerExecution.objects.filter(job_id__in=job_ids, cleaned_up=False).count()
    return {"completed": statuses.get("completed", 0), "attempts": attempts, "not_cleaned": dirty}


def one_round(args: argparse.Namespace) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="cm-bench-cp-")
    database_name = None
    if args.database_url:
        url, database_name = fresh_postgres(args.database_url)
    else:
        url = f"sqlite:///{home}/db.sqlite3"
    try:
        env = {**os.environ, "DATABASE_URL": url, "CONTAINER_MANAGER_HOME": home}
        job_ids = phase(args, "prepare", env)["job_ids"]
        if args.replicas > 1:
            result = run_replicas(args, env, url, home)
            job_ids = result.pop("job_ids")
        else:
            result = phase(args, "daemon", env)
        verify = phase(args, "check", {**env, "CM_BENCH_JOB_IDS": json.dumps(job_ids)})
        result.update(verify)
        n = len(job_ids)
        result.update(
            jobs=n,
            jobs_per_second=n / result["wall_seconds"],
            queries_per_job=result["queries"] / n,
            cpu_ms_per_job=1000 * result["cpu_seconds"] / n,
            postgres_cpu_ms_per_job=1000 * result["postgres_cpu_seconds"] / n,
        )
        return result
    finally:
        if database_name:
            drop_postgres(args.database_url, database_name)


def phase(args: argparse.Namespace, name: str, env: dict[str, str]) -> dict[str, Any]:
    """Run one phase in a child process; its last line of output is a JSON object."""
    argv = [sys.executable, __file__, "--phase", name]
    for option in ("jobs", "hosts", "capacity", "workers", "history", "command", "replicas"):
        argv += [f"--{option}", str(getattr(args, option))]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {name} phase failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def child(args: argparse.Namespace) -> int:
    setup_django(os.environ["DATABASE_URL"], os.environ["CONTAINER_MANAGER_HOME"])
    if args.phase == "prepare":
        result: dict[str, Any] = {"job_ids": prepare(args)}
    elif args.phase == "insert":
        result = {"job_ids": insert(args)}
    elif args.phase == "replica":
        result = run_replica(args)
    elif args.phase == "check":
        result = check(json.loads(os.environ["CM_BENCH_JOB_IDS"]))
    else:
        result = run_daemon(args)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        return child(args)
    if args.replicas > 1 and not args.database_url:
        raise SystemExit("--replicas needs PostgreSQL (--database-url): SQLite runs a single daemon")
    rounds = [one_round(args) for _ in range(args.rounds)]
    keys = (
        "jobs_per_second",
        "queries_per_job",
        "cpu_ms_per_job",
        "postgres_cpu_ms_per_job",
        "machine_busy_percent",
        "peak_rss_mb",
        "wall_seconds",
    )
    medians = {key: statistics.median(r[key] for r in rounds) for key in keys}
    problems = [
        r for r in rounds if (r["completed"], r["attempts"], r["not_cleaned"]) != (r["jobs"], r["jobs"], 0)
    ]
    report = {
        "database": "postgresql" if args.database_url else "sqlite",
        "jobs": args.jobs,
        "hosts": args.hosts,
        "capacity": args.capacity,
        "workers": args.workers,
        "replicas": args.replicas,
        "history": args.history,
        "rounds": rounds,
        "median": medians,
        "all_jobs_completed_once": not problems,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"control plane: {report['database']}, {args.jobs} jobs x {args.rounds} round(s), "
            f"{args.hosts} mock hosts x {args.capacity} slots, {args.replicas} replica(s) x {args.workers} workers, "
            f"{args.history} finished jobs loaded first"
        )
        print(
            f"{'round':>6} {'jobs/s':>8} {'queries/job':>12} {'CPU ms/job':>11} {'PG CPU ms/job':>14}"
            f" {'machine busy':>13} {'peak RSS MB':>12}"
        )
        for label, r in [*((str(i), r) for i, r in enumerate(rounds, start=1)), ("median", medians)]:
            print(
                f"{label:>6} {r['jobs_per_second']:>8.1f} {r['queries_per_job']:>12.1f} "
                f"{r['cpu_ms_per_job']:>11.1f} {r['postgres_cpu_ms_per_job']:>14.1f}"
                f" {r['machine_busy_percent']:>12.0f}% {r['peak_rss_mb']:>12.0f}"
            )
        print("every job completed once, cleaned up: " + ("yes" if not problems else f"NO: {problems}"))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
