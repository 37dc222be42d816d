"""``list`` and ``show``: what jobs there are, and everything about one of them."""

from __future__ import annotations

import time
from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.utils import timezone

from container_manager.management.jobcli import workflow
from container_manager.management.jobcli.common import (
    Output,
    duration,
    format_errors,
    get_job,
    job_dict,
    job_id,
    positive_float,
    positive_int,
)
from container_manager.management.jobcli.registry import Subcommand, register
from container_manager.states import JobStatus

HEADER = f"{'ID':>7}  {'NAME':<20} {'STATUS':<10} {'ATT':>3}  {'EXIT':>4}  {'HOST':<16} {'AGE':>5}  {'DURATION':>8}  IMAGE"


def short(delta: timedelta | None) -> str:
    """kubectl's compact ages: ``45s``, ``3m12s``, ``5h4m``, ``12d``; ``-`` when unknown."""
    if delta is None:
        return "-"
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes}m{rest}s" if minutes < 10 and rest else f"{minutes}m"
    if seconds < 86400:
        hours, rest = divmod(seconds, 3600)
        return f"{hours}h{rest // 60}m" if hours < 10 and rest >= 60 else f"{hours}h"
    return f"{seconds // 86400}d"


def list_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--status",
        choices=[s.value for s in JobStatus],
        action="append",
        help="only this status (repeatable)",
    )
    parser.add_argument("--host", help="only jobs pinned to or run on this host")
    parser.add_argument("--recent", type=duration, help="only jobs created within this duration, e.g. 24h")
    parser.add_argument("--limit", type=positive_int, default=50, help="at most this many rows (default: 50)")
    parser.add_argument("--array", type=positive_int, metavar="ID", help="only the jobs of this job array")
    parser.add_argument("--json", action="store_true", help="JSON output")
    parser.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=2.0,
        help="seconds between redraws with --watch (default: 2)",
    )


def _query(options: dict[str, Any]) -> Any:
    from container_manager.models import ContainerJob, ExecutorHost

    jobs = ContainerJob.objects.select_related("docker_host", "schedule").prefetch_related("depends_on")
    if options["array"]:
        jobs = jobs.filter(array=workflow.array_of(options["array"]))
    if options["status"]:
        jobs = jobs.filter(status__in=options["status"])
    if options["host"]:
        if not ExecutorHost.objects.filter(name=options["host"]).exists():
            raise CommandError(f"--host: no executor host named {options['host']!r}")
        jobs = jobs.by_host(options["host"])
    if options["recent"]:
        jobs = jobs.recent(hours=options["recent"].total_seconds() / 3600)
    return jobs


def table(options: dict[str, Any]) -> list[str]:
    jobs = _query(options)
    rows = list(jobs.order_by("-created_at", "-id")[: options["limit"]])
    now = timezone.now()
    lines = [workflow.array_of(options["array"]).summary()] if options["array"] else []
    lines.append(HEADER)
    for job in rows:
        host = job.docker_host.name if job.docker_host else "-"
        code = "" if job.exit_code is None else str(job.exit_code)
        name = (job.name or "-")[:20]
        lines.append(
            f"{job.pk:>7}  {name:<20} {job.status:<10} {job.attempts:>3}  {code:>4}  {host:<16} "
            f"{short(now - job.created_at):>5}  {short(job.runtime_duration):>8}  {job.image}"
        )
    if len(rows) == options["limit"]:
        total = jobs.count()
        if total > len(rows):
            lines.append(f"{len(rows):,} of {total:,} jobs (--limit to see more)")
    return lines


def list_run(out: Output, options: dict[str, Any]) -> None:
    if options["watch"] and options["json"]:
        raise CommandError("--watch redraws a table; it does not go with --json")
    if options["json"]:
        out.emit_json(
            [job_dict(job) for job in _query(options).order_by("-created_at", "-id")[: options["limit"]]]
        )
        return
    if not options["watch"]:
        for line in table(options):
            out.line(line)
        return
    previous: list[str] = []
    try:
        while True:
            lines = table(options)
            if out.on_terminal:
                out.line("\x1b[H\x1b[2J" + f"every {options['interval']:g} s, Ctrl-C to stop")
                for line in lines:
                    out.line(line)
            elif lines[1:] != previous[1:]:  # not a terminal: print the table again only when it changed
                for line in lines:
                    out.line(line)
                out.line("")
            previous = lines
            time.sleep(options["interval"])
    except KeyboardInterrupt:
        return


def show_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job")
    parser.add_argument("--json", action="store_true", help="JSON output")


def show_run(out: Output, options: dict[str, Any]) -> None:
    job = get_job(options["job_id"])
    executions = list(job.executions.order_by("attempt"))
    events = list(job.events.order_by("at", "id"))
    try:
        env: dict[str, str] | str = job.get_safe_environment_variables()
    except ValidationError as exc:
        # A row broken by SQL: say so, and still show the rest of the job.
        env = f"(not shown: {format_errors(exc)})"
    if options["json"]:
        data = job_dict(job)
        data["environment"] = env
        data["attempts_detail"] = [
            {
                "attempt": e.attempt,
                "status": e.status,
                "host": e.host_name,
                "container": e.container_name,
                "exit_code": e.exit_code,
                "reason": e.reason,
                "oom_killed": e.oom_killed,
                "started_at": e.started_at,
                "finished_at": e.finished_at,
                "message": e.message,
            }
            for e in executions
        ]
        data["history"] = [
            {
                "at": ev.at,
                "from": ev.from_status,
                "to": ev.to_status,
                "actor": ev.actor,
                "reason": ev.reason,
                "message": ev.message,
            }
            for ev in events
        ]
        out.emit_json(data)
        return
    for key, value in job_dict(job).items():
        if key not in workflow.WORKFLOW_KEYS:  # said in words below
            out.line(f"{key:>16}: {'' if value is None else value}")
    for label, text in workflow.workflow_lines(job):
        out.line(f"{label:>16}: {text}")
    if isinstance(env, str):
        out.line(f"{'environment':>16}: {env}")
    elif env:
        out.line(f"{'environment':>16}: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    out.line("\nattempts:")
    for e in executions:
        out.line(
            f"  #{e.attempt} {e.status:<9} host={e.host_name} exit={e.exit_code} reason={e.reason or '-'} {e.message}"
        )
    out.line("\nhistory:")
    for ev in events:
        arrow = f"{ev.from_status or '-'} -> {ev.to_status}" if ev.to_status else "note"
        out.line(f"  {ev.at:%Y-%m-%d %H:%M:%S} {arrow:<24} {ev.actor:<28} {ev.reason} {ev.message}")


register(
    Subcommand(
        name="list",
        help="list jobs, newest first",
        example="list --status failed --recent 24h --limit 20",
        arguments=list_arguments,
        run=list_run,
    )
)
register(
    Subcommand(
        name="show",
        help="show a job with its attempts, environment (masked) and history",
        example="show 42 --json",
        arguments=show_arguments,
        run=show_run,
    )
)
