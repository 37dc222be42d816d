#!/usr/bin/env python3
"""Throughput and latency of the reconciler against a plain docker-py loop, side by side.

Why this exists: DESIGN.md section 8 sets the targets as *ratios to the machine's own limit*,
because a 2-core machine running dockerd is CPU-bound at a few containers per second and an
absolute number means nothing elsewhere. So one run measures both, at the same concurrency,
with the same image, command, limits and hardening:

1. the baseline: C threads each doing create / start / wait / logs / remove with docker-py;
2. the reconciler: a real ``Daemon`` on a fresh database, the host's ``max_concurrent_jobs`` = C
   (so as many containers at once as the loop runs), with the daemon's default number of worker
   threads as users run it (4; C when C is larger; ``--workers`` to choose), N job rows
   inserted at once; wall time from the first insert to the last job's terminal transition
   (``JobEvent.at``);

and prints both throughputs and their ratio (``--rounds R`` repeats both phases, alternating
their order, and reports medians: this machine is shared and noisy), plus

* detection latency: container exit (Docker's ``FinishedAt``, recorded on the attempt) to the
  job's terminal transition in the database;
* insert-to-start in the batch (job ``created_at`` to container ``StartedAt``; this includes
  queueing behind the other N-1 jobs);
* pickup on an idle daemon: jobs inserted one at a time, insert to container start.

``--tls-hosts N`` runs both phases on N extra ``dockerd`` hosts reached over mutual TLS
instead of the default daemon (``bench/targets.py``): C raw threads per host, and one host
row per daemon with C slots each for the reconciler (at least C x N workers), jobs unpinned so the
reconciler spreads them by free slots; the attempts each host ran are reported.

``--profile`` adds where the daemon's time went: per reconcile step, the wall time spent in
executor calls, in SQL, and the rest (Python); CPU seconds per daemon thread; and the workers'
cProfile hotspots (the profiler itself slows the daemon: compare ratios without it).

A benchmark is a script, never a timed assertion in a test. Results: BENCHMARKS.md.

Usage: .venv/bin/python bench/throughput.py [--jobs 60] [--concurrency 4] [--rounds 1]
       [--database-url URL] [--command true] [--pickup 10] [--tls-hosts N] [--profile] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for its packages

from bench import floor, targets
from bench.instrument import Instrument
from bench.measure import CpuMeter, median, summary, thread_cpu, thread_cpu_snapshot
from bench.targets import Target

TERMINAL = ("completed", "failed", "timeout", "cancelled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run N short jobs through the reconciler and N containers through a plain "
        "docker-py loop at the same concurrency; print both throughputs, their ratio and latencies."
    )
    parser.add_argument("--jobs", type=int, default=60, help="containers per phase (default 60)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="threads / workers / host slots (default 4)"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="an EMPTY database for the reconciler (default: a fresh SQLite file in a temp dir)",
    )
    parser.add_argument("--command", default="true", help="what each container runs (default: true)")
    parser.add_argument("--pickup", type=int, default=10, help="jobs for the idle-pickup phase (default 10)")
    parser.add_argument(
        "--order",
        choices=["raw-first", "reconciler-first"],
        default="raw-first",
        help="which phase runs first in the first round (default raw-first)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat both phases, alternating their order (default 1)"
    )
    parser.add_argument(
        "--log-level", default="INFO", help="daemon log level; logs go to a file (default INFO)"
    )
    parser.add_argument(
        "--tls-hosts",
        type=int,
        default=0,
        metavar="N",
        help="run on N extra dockerd hosts over mutual TLS instead of the default daemon (needs root)",
    )
    parser.add_argument(
        "--floor",
        type=int,
        default=10,
        metavar="K",
        help="containers for Docker's own floor (exit -> logs readable, create + start; default 10)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="the daemon's worker threads (default: its own default, or the host slots if more)",
    )
    parser.add_argument(
        "--network",
        default="bridge",
        help="the containers' network mode in every phase (default bridge, the executor's default; "
        "'none' skips the network teardown dockerd does at each exit)",
    )
    parser.add_argument("--profile", action="store_true", help="break down where the daemon spends its time")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (database, daemon log) afterwards"
    )
    args = parser.parse_args(argv)
    if (
        args.jobs < 1
        or args.concurrency < 1
        or args.rounds < 1
        or min(args.pickup, args.tls_hosts, args.floor) < 0
    ):
        parser.error(
            "--jobs, --concurrency and --rounds must be at least 1, --pickup, --tls-hosts and --floor at least 0"
        )
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


# The baseline ---------------------------------------------------------------------------------


def run_raw(
    image: str,
    command: list[str],
    jobs: int,
    concurrency: int,
    instance: str,
    hosts: list[Target],
    network: str,
) -> dict[str, Any]:
    """C threads per host doing create/start/wait/logs/remove with docker-py, with the reconciler's limits."""
    from executors.types import LABEL_INSTANCE

    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(jobs):
        todo.put(index)
    exit_codes: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(host: Target) -> None:
        api = host.connect()
        try:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                name = f"bench-raw-{instance}-{index}"
                try:
                    host_config = floor.host_config(api, network)
                    api.create_container(
                        image=image,
                        command=command,
                        name=name,
                        labels={LABEL_INSTANCE: instance},
                        user="65534:65534",
                        host_config=host_config,
                        detach=True,
                    )
                    api.start(name)
                    code = api.wait(name)["StatusCode"]
                    api.logs(name, stdout=True, stderr=True)
                    api.remove_container(name, force=True)
                    with lock:
                        exit_codes.append(code)
                except Exception as exc:
                    with lock:
                        errors.append(f"{name}: {exc}")
        finally:
            api.close()

    meter = CpuMeter()
    meter.start()
    started = time.monotonic()
    threads = [
        threading.Thread(target=worker, args=(host,), name=f"raw-{host.name}-{i}")
        for host in hosts
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    return {
        "wall_s": round(wall, 3),
        "jobs_per_s": round(jobs / wall, 3),
        "succeeded": sum(1 for c in exit_codes if c == 0),
        "errors": errors[:5],
        "cpu": meter.stop(jobs),
    }


# The reconciler -------------------------------------------------------------------------------


@contextmanager
def daemon_running(workers: int, instrument: Instrument | None) -> Iterator[Any]:
    from django.db import connections

    from reconciler.daemon import Daemon, DaemonOptions

    daemon = Daemon(DaemonOptions(workers=workers, actor="bench"))
    if instrument is not None:
        instrument.wrap_reconciler(daemon.reconciler)
    thread = threading.Thread(target=lambda: (daemon.run(), connections.close_all()), name="cm-daemon")
    thread.start()
    if not daemon.ready.wait(60):
        raise SystemExit("the daemon did not start within 60 s")
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(120)


def wait_finished(job_ids: list[int], timeout: float) -> None:
    from container_manager.models import ContainerJob

    deadline = time.monotonic() + timeout
    while ContainerJob.objects.filter(pk__in=job_ids).unfinished().exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs still unfinished after {timeout:.0f}s: is the daemon stuck?")
        # The times measured come from the rows, not from this loop: looking less often only
        # spares the machine a query the raw phase never pays for.
        time.sleep(0.25)


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds()


def job_latencies(job_ids: list[int], slots: int | None = None) -> dict[str, Any]:
    """From the rows: first insert, last terminal transition, and raw latency samples (ms).

    With ``slots`` (the host's capacity) also the slot refill delay: the k-th claim (k > slots)
    had to wait for the (k - slots)-th job to finish; how long after that did it come?
    """
    from container_manager.models import ContainerExecution, ContainerJob, JobEvent

    created = dict(ContainerJob.objects.filter(pk__in=job_ids).values_list("id", "created_at"))
    statuses = list(ContainerJob.objects.filter(pk__in=job_ids).values_list("status", flat=True))
    events = JobEvent.objects.filter(job_id__in=job_ids)
    terminal_at = dict(events.filter(to_status__in=TERMINAL).values_list("job_id", "at"))
    claimed_at = dict(events.filter(to_status="launching", attempt=1).values_list("job_id", "at"))
    detection, start = [], []
    for job_id, started_at, finished_at in ContainerExecution.objects.filter(job_id__in=job_ids).values_list(
        "job_id", "started_at", "finished_at"
    ):
        seconds = _seconds(finished_at, terminal_at.get(job_id))
        if seconds is not None:
            detection.append(1000 * seconds)
        seconds = _seconds(created.get(job_id), started_at)
        if seconds is not None:
            start.append(1000 * seconds)
    result: dict[str, Any] = {
        "first_insert": min(created.values()),
        "last_terminal": max(terminal_at.values()),
        "completed": statuses.count("completed"),
        "detection": detection,
        "insert_to_start": start,
    }
    if slots:
        claims, ends = sorted(claimed_at.values()), sorted(terminal_at.values())
        result["refill"] = [
            1000 * (claims[k] - ends[k - slots]).total_seconds() for k in range(slots, len(claims))
        ]
        busy = sum((terminal_at[j] - claimed_at[j]).total_seconds() for j in claimed_at if j in terminal_at)
        wall = (result["last_terminal"] - result["first_insert"]).total_seconds()
        result["occupancy_percent"] = round(100 * busy / (wall * slots), 1) if wall else None
    return result


def run_reconciler(
    image: str,
    command: str,
    jobs: int,
    concurrency: int,
    pickup: int,
    profile: bool,
    round_number: int,
    hosts: list[Target],
    network: str,
    workers: int | None,
) -> dict[str, Any]:
    """One reconciler phase on new host rows (C slots each); ``samples`` holds raw latencies for pooling."""
    from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost

    rows = [
        ExecutorHost.objects.create(
            name=f"{host.name}-{round_number}",
            executor_type="docker",
            connection_string=host.connection_string,
            executor_config={**host.executor_config, "network": network},
            max_concurrent_jobs=concurrency,
        )
        for host in hosts
    ]
    instrument = Instrument() if profile else None
    if instrument is not None:
        for row in rows:
            instrument.wrap_executor(row.get_executor())
    # One host: jobs pinned to it, as before. Several: unpinned, placed by free slots.
    pinned = rows[0] if len(rows) == 1 else None
    slots = concurrency * len(rows)

    def new_job() -> ContainerJob:
        job = ContainerJob(
            image=image,
            command=command,
            docker_host=pinned,
            memory_limit=64,
            cpu_limit=0.5,
            timeout_seconds=120,
        )
        job.prepare_for_insert()
        return job

    meter = CpuMeter()
    from reconciler.daemon import DaemonOptions

    workers = workers or max(slots, DaemonOptions().workers)
    with daemon_running(workers, instrument):
        # The batch: N rows inserted at once into a running, idle daemon.
        batch = [new_job() for _ in range(jobs)]
        threads_before = thread_cpu_snapshot()
        meter.start()
        ContainerJob.objects.bulk_create(batch)
        ids = [job.pk for job in batch]
        wait_finished(ids, timeout=60 + 10 * jobs)
        cpu = meter.stop(jobs)
        threads = thread_cpu(threads_before) if profile else {}
        measured = job_latencies(ids, slots=slots)
        wall = (measured["last_terminal"] - measured["first_insert"]).total_seconds()
        result: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "jobs_per_s": round(jobs / wall, 3),
            "workers": workers,
            "succeeded": measured["completed"],
            "slot_occupancy_percent": measured["occupancy_percent"],
            "attempts_per_host": dict(
                sorted(
                    Counter(
                        ContainerExecution.objects.filter(job_id__in=ids).values_list("host_name", flat=True)
                    ).items()
                )
            ),
            "cpu": cpu,
            "samples": {
                "detection": measured["detection"],
                "insert_to_start": measured["insert_to_start"],
                "refill": measured["refill"],
                "pickup": [],
            },
        }
        if instrument is not None:
            result["profile"] = {
                "per_step": instrument.report(jobs),
                "thread_cpu_s": threads,
                "hotspots": instrument.hotspots(),
            }
        # Pickup: one job at a time into the idle daemon, at varying phases of its poll cycle.
        pickup_ids = []
        for index in range(pickup):
            job = new_job()
            job.save()
            pickup_ids.append(job.pk)
            wait_finished([job.pk], timeout=60)
            time.sleep(0.137 * (index % 4))
        if pickup_ids:
            result["samples"]["pickup"] = job_latencies(pickup_ids)["insert_to_start"]
    # The next round makes rows of its own: unpinned jobs must not find these ones too.
    ExecutorHost.objects.filter(pk__in=[row.pk for row in rows]).update(is_active=False)
    return result


# Driver ---------------------------------------------------------------------------------------


def setup(database_url: str | None, instance: str, log_level: str) -> tuple[str, Path]:
    home = Path(tempfile.mkdtemp(prefix="cm-bench-"))
    os.environ["CONTAINER_MANAGER_HOME"] = str(home)
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{home / 'bench.sqlite3'}"
    os.environ["CONTAINER_MANAGER_INSTANCE"] = instance
    os.environ["DJANGO_SETTINGS_MODULE"] = "container_manager.settings"
    import django
    from django.core.management import call_command

    django.setup()
    from container_manager.logconfig import configure

    configure("json", log_level)
    log_file = (home / "daemon.log").open("a")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(log_file)
    call_command("migrate", verbosity=0)
    from container_manager.models import ContainerJob, ExecutorHost

    if ContainerJob.objects.exists() or ExecutorHost.objects.exists():
        raise SystemExit("bench: the database is not empty; give --database-url of an empty database")
    from django.db import connection

    return connection.vendor, home


@contextmanager
def docker_hosts(count: int, image: str) -> Iterator[list[Target]]:
    """The default daemon, or ``count`` harness daemons over TLS (removed afterwards)."""
    if not count:
        yield targets.local()
        return
    with targets.tls_hosts(count, image) as hosts:
        yield hosts


def fmt(value: float | int | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(r: dict[str, Any]) -> None:
    print(
        f"container-manager throughput: {r['jobs']} jobs, concurrency {r['concurrency']}, "
        f"database {r['database']}, command {r['command']!r}, network {r['network']}, "
        f"{len(r['rounds'])} round(s); the daemon had {r['rounds'][0]['reconciler']['workers']} workers"
    )
    if r["hosts"] != ["default"]:
        print(
            f"on {len(r['hosts'])} dockerd hosts over mutual TLS ({', '.join(r['hosts'])}), "
            f"concurrency {r['concurrency']} per host"
        )
    print()
    print(
        f"{'round':<7}{'phase':<22}{'wall s':>8}{'jobs/s':>8}{'ok':>5}{'CPU busy':>10}"
        f"{'own CPU/job':>13}{'engine CPU/job':>16}{'ratio':>7}"
    )
    for number, rnd in enumerate(r["rounds"], start=1):
        for label, key in (("raw docker-py loop", "raw"), ("reconciler (daemon)", "reconciler")):
            phase, cpu = rnd[key], rnd[key]["cpu"]
            ratio = f"{rnd['ratio']:>7.2f}" if key == "reconciler" else ""
            print(
                f"{number:<7}{label:<22}{phase['wall_s']:>8.2f}{phase['jobs_per_s']:>8.2f}{phase['succeeded']:>5}"
                f"{cpu['machine_busy_percent']:>9.0f}%{cpu['bench_process_cpu_s_per_job']:>12.3f}s"
                f"{cpu['dockerd_containerd_cpu_s_per_job']:>15.3f}s{ratio}"
            )
    print()
    print(
        f"throughput: raw {r['raw_jobs_per_s']:.2f} jobs/s, reconciler {r['reconciler_jobs_per_s']:.2f} jobs/s "
        f"(medians); ratio reconciler/raw {r['ratio']:.2f} (median of rounds; DESIGN.md target >= 0.90)"
    )
    print()
    print(f"{'latency (ms), all rounds':42}{'n':>5}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    docker_floor = r["docker_floor_ms"]
    rows = [
        ("detection: container exit -> DB terminal", r["latency_ms"]["detection"]),
        ("insert -> start, batch (with queueing)", r["latency_ms"]["insert_to_start"]),
        ("pickup: insert -> start, idle daemon", r["latency_ms"]["pickup"]),
        ("slot refill: job end -> next claim", r["latency_ms"]["refill"]),
        ("floor: exit -> logs readable (Docker)", docker_floor["exit_to_logs"]),
        ("floor: create + start calls (Docker)", docker_floor["create_start"]),
    ]
    for label, s in rows:
        print(
            f"{label:42}{s['n']:>5}{fmt(s['p50']):>8}{fmt(s['p90']):>8}{fmt(s['p99']):>8}{fmt(s['max']):>8}"
        )
    own = [
        (name, ours, theirs)
        for name, ours, theirs in (
            ("detection", r["latency_ms"]["detection"]["p50"], docker_floor["exit_to_logs"]["p50"]),
            ("pickup", r["latency_ms"]["pickup"]["p50"], docker_floor["create_start"]["p50"]),
        )
        if ours is not None and theirs is not None
    ]
    if own:
        print("above Docker's floor (p50): " + ", ".join(f"{n} {a - b:+.0f} ms" for n, a, b in own))
    print("targets: detection p50 < 50, p99 < 250; pickup p50 < 300 (PostgreSQL), < 1500 (SQLite)")
    print(f"slot occupancy (sum of claim -> terminal / wall x slots): {fmt(r['slot_occupancy_percent'], 1)}%")
    if r["hosts"] != ["default"]:
        spread = r["rounds"][-1]["reconciler"]["attempts_per_host"]
        print("reconciler attempts per host, last round: " + ", ".join(f"{k} {v}" for k, v in spread.items()))
    profile = r["rounds"][-1]["reconciler"].get("profile")
    if profile:
        print()
        print(
            f"{'daemon time per job, last round (wall, all workers)':52}{'calls':>7}{'total s':>9}{'ms/job':>9}"
        )
        for key, row in profile["per_step"].items():
            print(f"{key:52}{row['calls']:>7}{row['total_s']:>9.3f}{row['ms_per_job']:>9.2f}")
        print(
            "CPU seconds by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in profile["thread_cpu_s"].items())
        )
        print()
        print("worker hotspots (cProfile inside reconcile steps, by own time):")
        print(profile["hotspots"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    instance = f"bench{uuid4().hex[:8]}"
    vendor, home = setup(args.database_url, instance, args.log_level)
    from container_manager.validation import split_command
    from tests.support.images import ensure_busybox_image

    image = ensure_busybox_image()
    argv_command = list(split_command(args.command))
    rounds: list[dict[str, Any]] = []
    with docker_hosts(args.tls_hosts, image) as hosts:
        try:
            for number in range(args.rounds):
                # Alternate the order round by round, so neither phase always runs on a warmer daemon.
                raw_first = (args.order == "raw-first") == (number % 2 == 0)
                phases: dict[str, Any] = {}
                for phase in ("raw", "reconciler") if raw_first else ("reconciler", "raw"):
                    if phase == "raw":
                        phases["raw"] = run_raw(
                            image, argv_command, args.jobs, args.concurrency, instance, hosts, args.network
                        )
                    else:
                        last = number == args.rounds - 1
                        phases["reconciler"] = run_reconciler(
                            image,
                            args.command,
                            args.jobs,
                            args.concurrency,
                            args.pickup if last else 0,
                            args.profile and last,
                            number,
                            hosts,
                            args.network,
                            args.workers,
                        )
                ratio = phases["reconciler"]["jobs_per_s"] / phases["raw"]["jobs_per_s"]
                phases["ratio"] = round(ratio, 3)
                rounds.append(phases)
            api = hosts[0].connect()
            try:
                docker_floor = floor.measure(
                    api, image, argv_command, args.network, args.floor, f"bench-floor-{instance}"
                )
            finally:
                api.close()
        finally:
            left = targets.remove_leftovers(hosts, instance)
    pooled: dict[str, list[float]] = {"detection": [], "insert_to_start": [], "pickup": [], "refill": []}
    for rnd in rounds:
        for key, values in rnd["reconciler"].pop("samples").items():
            pooled[key].extend(values)
    result = {
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "hosts": [h.connection_string or "default" for h in hosts],
        "database": vendor,
        "command": args.command,
        "network": args.network,
        "rounds": rounds,
        "raw_jobs_per_s": median([r["raw"]["jobs_per_s"] for r in rounds]),
        "reconciler_jobs_per_s": median([r["reconciler"]["jobs_per_s"] for r in rounds]),
        "ratio": median([r["ratio"] for r in rounds]),
        "latency_ms": {key: summary(values) for key, values in pooled.items()},
        "docker_floor_ms": docker_floor,
        "slot_occupancy_percent": median([r["reconciler"]["slot_occupancy_percent"] or 0 for r in rounds]),
        "leftover_containers": left,
    }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_table(result)
    failed = any(
        rnd["raw"]["succeeded"] != args.jobs or rnd["reconciler"]["succeeded"] != args.jobs for rnd in rounds
    )
    if failed or left or args.keep:
        print(f"bench: database and daemon log kept in {home}", file=sys.stderr)
    else:
        shutil.rmtree(home, ignore_errors=True)
    if failed:
        print("bench: some containers or jobs did not succeed (see the daemon log)", file=sys.stderr)
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
