"""``schedule``: the cron schedules that create jobs (add, list, pause, resume, delete)."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from container_manager.management.jobcli.common import Output, positive_int
from container_manager.management.jobcli.registry import Subcommand, register
from container_manager.management.jobcli.submit import parse_env_options

#: What ``schedule add`` may set, by option, beside the name, --cron and the relations.
SCHEDULE_OPTIONS = (
    "timezone",
    "image",
    "memory_limit",
    "cpu_limit",
    "timeout_seconds",
    "max_retries",
    "priority",
    "concurrency_policy",
    "starting_deadline_seconds",
)


def arguments(parser: ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="schedule_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create a schedule (validated as its jobs would be)")
    add.add_argument("name")
    add.add_argument("--cron", required=True, help="five fields, e.g. '30 2 * * *' (quote it)")
    add.add_argument("--timezone", help="IANA time zone of the cron (default: UTC)")
    add.add_argument("--image", required=True)
    add.add_argument("--command", dest="job_command", default="", help="command (shell quoting, no shell)")
    add.add_argument("--host", help="pin the jobs to this executor host, by name")
    add.add_argument("--template", help="environment template, by name")
    add.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="a variable (repeatable)"
    )
    add.add_argument("--memory", type=positive_int, dest="memory_limit", help="memory limit in MB")
    add.add_argument("--cpu", type=float, dest="cpu_limit", help="CPU limit in cores")
    add.add_argument("--timeout", type=positive_int, dest="timeout_seconds", help="seconds per attempt")
    add.add_argument("--max-retries", type=int, dest="max_retries")
    add.add_argument("--priority", type=int)
    add.add_argument(
        "--concurrency-policy",
        choices=["allow", "forbid", "replace"],
        help="what a tick does while a run is unfinished (default: forbid)",
    )
    add.add_argument(
        "--starting-deadline",
        type=positive_int,
        dest="starting_deadline_seconds",
        help="skip a tick not run within this many seconds",
    )
    add.add_argument("--paused", action="store_true", help="create it disabled")
    add.add_argument("--json", action="store_true", help="JSON output")
    listing = actions.add_parser("list", help="list schedules with their next and last runs")
    listing.add_argument("--json", action="store_true", help="JSON output")
    for name, text in (
        ("pause", "stop creating jobs (ticks meanwhile are skipped)"),
        ("resume", "create jobs again, from the next tick"),
        ("delete", "delete a schedule (its jobs stay)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("name")
        action.add_argument("--json", action="store_true", help="JSON output")


def _schedule_dict(schedule: Any) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "enabled": schedule.enabled,
        "concurrency_policy": schedule.concurrency_policy,
        "starting_deadline_seconds": schedule.starting_deadline_seconds,
        "image": schedule.image,
        "command": schedule.command,
        "host": schedule.docker_host.name if schedule.docker_host_id else None,
        "next_run_at": when(schedule.next_run_at),
        "last_scheduled_at": when(schedule.last_scheduled_at),
        "last_error": schedule.last_error,
    }


def _named(name: str) -> Any:
    from container_manager.models import JobSchedule

    schedule = JobSchedule.objects.select_related("docker_host").filter(name=name).first()
    if schedule is None:
        raise CommandError(f"no schedule named {name!r}")
    return schedule


def run(out: Output, options: dict[str, Any]) -> None:
    action = options["schedule_action"]
    if action == "list":
        _list_schedules(out, options)
        return
    if action == "add":
        schedule = _add_schedule(options)
    else:
        schedule = _named(options["name"])
        if action == "pause":
            schedule.pause()
        elif action == "resume":
            schedule.resume()
        else:
            data = _schedule_dict(schedule)
            schedule.delete()
            if options["json"]:
                out.emit_json(data)
            else:
                out.line(f"deleted schedule {data['name']} (its jobs stay)")
            return
        schedule.refresh_from_db()
    if options["json"]:
        out.emit_json(_schedule_dict(schedule))
        return
    verb = {"add": "created", "pause": "paused", "resume": "resumed"}[action]
    after = f"next run {schedule.next_run_at.isoformat()}" if schedule.next_run_at else "paused"
    out.line(f"{verb} schedule {schedule.name} ({schedule.cron} {schedule.timezone}): {after}")


def _add_schedule(options: dict[str, Any]) -> Any:
    from container_manager.envparse import render_env
    from container_manager.models import EnvironmentVariableTemplate, ExecutorHost, JobSchedule

    values: dict[str, Any] = {key: options[key] for key in SCHEDULE_OPTIONS if options.get(key) is not None}
    env: dict[str, str] = {}
    parse_env_options(options["env"], "--env", env)
    schedule = JobSchedule(
        name=options["name"],
        cron=options["cron"],
        command=options["job_command"],
        override_environment=render_env(env),
        enabled=not options["paused"],
        created_by="cli",
        **values,
    )
    for option, field, model in (
        ("host", "docker_host", ExecutorHost),
        ("template", "environment_template", EnvironmentVariableTemplate),
    ):
        if options[option]:
            row = model.objects.filter(name=options[option]).first()
            if row is None:
                raise CommandError(f"--{option}: no {field.replace('_', ' ')} named {options[option]!r}")
            setattr(schedule, field, row)
    schedule.save()  # ValidationError: manage_jobs turns it into one line naming the fields
    return schedule


def _list_schedules(out: Output, options: dict[str, Any]) -> None:
    from container_manager.models import JobSchedule

    rows = [_schedule_dict(s) for s in JobSchedule.objects.select_related("docker_host").order_by("name")]
    if options["json"]:
        out.emit_json(rows)
        return
    out.line(f"{'NAME':<24} {'CRON':<16} {'TIMEZONE':<16} {'POLICY':<8} {'NEXT RUN':<26} LAST RUN")
    for row in rows:
        nxt = row["next_run_at"] or "(paused)"
        last = row["last_scheduled_at"] or "-"
        note = f"  ! {row['last_error']}" if row["last_error"] else ""
        out.line(
            f"{row['name']:<24} {row['cron']:<16} {row['timezone']:<16} {row['concurrency_policy']:<8} "
            f"{nxt:<26} {last}{note}"
        )


register(
    Subcommand(
        name="schedule",
        help="cron schedules that create jobs: add, list, pause, resume, delete",
        example="schedule add nightly --cron '30 2 * * *' --timezone Europe/Paris --image busybox",
        arguments=arguments,
        run=run,
    )
)
