"""The workflow parts of ``manage_jobs``: ``submit --after/--array/--parallelism``, what ``show``
and ``list`` say about dependencies and arrays, and ``manage_jobs schedule ...``.

Kept apart from the command's module so that the command only registers and dispatches them.
"""

from __future__ import annotations

from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

#: What ``schedule add`` may set, by option, beside --name and --cron.
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


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise ArgumentTypeError(f"expected a number of at least 1, got {number}")
    return number


# submit ---------------------------------------------------------------------------------------


def add_submit_arguments(submit: ArgumentParser, job_id: Any) -> None:
    submit.add_argument(
        "--after",
        type=job_id,
        action="append",
        default=[],
        metavar="ID",
        help="Start only after job ID completed (repeatable); cancelled if it ends otherwise.",
    )
    submit.add_argument(
        "--array",
        type=_positive,
        metavar="N",
        help="Create N jobs with array_index 0..N-1 (CM_ARRAY_INDEX, CM_ARRAY_SIZE in the container).",
    )
    submit.add_argument(
        "--parallelism", type=_positive, metavar="K", help="With --array: at most K of them run at once."
    )


def check_submit_options(options: dict[str, Any]) -> None:
    if options["parallelism"] is not None and options["array"] is None:
        raise CommandError("submit: --parallelism goes with --array")
    if options["array"] is not None and options["file"]:
        raise CommandError("submit: --array makes one array from the options; it does not take --file")


def dependency_ids(spec: dict[str, Any], where: str) -> list[int]:
    """The ``after`` ids of one submitted job (``--after`` or a JSON line's ``after``), checked."""
    from container_manager.models.workflow import check_dependencies

    after = spec.get("after") or []
    if not isinstance(after, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in after):
        raise CommandError(f"{where}: after: expected a list of job ids")
    try:
        return check_dependencies(None, after)
    except ValidationError as exc:
        raise CommandError(f"{where}: {' '.join(exc.messages)}") from None


def submit_array(job: Any, options: dict[str, Any]) -> Any:
    """``submit --array N``: the array of ``job``'s desired state; returns the ``JobArray``."""
    from container_manager.models import USER_EDITABLE_FIELDS, ContainerJob

    fields = {name: getattr(job, name) for name in USER_EDITABLE_FIELDS}
    return ContainerJob.objects.create_array(
        options["array"],
        parallelism=options["parallelism"],
        depends_on=options["after"],
        created_by=job.created_by,
        **fields,
    )


def save_dependencies(jobs: list[Any], ids: list[list[int]]) -> None:
    from container_manager.models import JobDependency

    JobDependency.objects.bulk_create(
        JobDependency(job_id=job.pk, depends_on_id=pk)
        for job, after in zip(jobs, ids, strict=True)
        for pk in after
    )


def created_array_line(array: Any) -> str:
    from django.db.models import Max, Min

    span = array.jobs.aggregate(first=Min("pk"), last=Max("pk"))
    return f"created {array}: jobs {span['first']} to {span['last']}"


# show and list --------------------------------------------------------------------------------

#: The keys ``workflow_fields`` adds to a job's JSON.
WORKFLOW_KEYS = frozenset({"depends_on", "array", "array_index", "array_size", "schedule", "scheduled_for"})


def workflow_fields(job: Any) -> dict[str, Any]:
    """What ``show --json`` and ``list --json`` add about the job's place in a workflow."""
    return {
        "depends_on": sorted(other.pk for other in job.depends_on.all()),
        "array": job.array_id,
        "array_index": job.array_index,
        "array_size": job.array_size,
        "schedule": job.schedule.name if job.schedule_id else None,
        "scheduled_for": job.scheduled_for.isoformat() if job.scheduled_for else None,
    }


def workflow_lines(job: Any) -> list[tuple[str, str]]:
    """(label, text) lines ``show`` prints: dependencies both ways, the array, the schedule."""
    lines = []
    depends = list(job.depends_on.order_by("pk").values_list("pk", "status"))
    if depends:
        lines.append(("depends on", ", ".join(f"{pk} ({status})" for pk, status in depends)))
    dependents = list(job.dependents.order_by("pk").values_list("pk", "status"))
    if dependents:
        lines.append(("dependents", ", ".join(f"{pk} ({status})" for pk, status in dependents)))
    if job.array_index is not None:
        where = f"index {job.array_index} of {job.array_size}"
        lines.append(("array", f"{where}; {job.array.summary()}" if job.array_id else where))
    if job.schedule_id:
        tick = f" (tick {job.scheduled_for.isoformat()})" if job.scheduled_for else " (run now)"
        lines.append(("schedule", f"{job.schedule.name}{tick}"))
    return lines


def array_of(value: Any) -> Any:
    from container_manager.models import JobArray

    array = JobArray.objects.filter(pk=value).first()
    if array is None:
        raise CommandError(f"--array: no job array {value}")
    return array


# schedule -------------------------------------------------------------------------------------


def add_schedule_parser(sub: Any, positive_int: Any) -> None:
    schedule = sub.add_parser(
        "schedule", help="Cron schedules that create jobs: add, list, pause, resume, delete."
    )
    actions = schedule.add_subparsers(dest="schedule_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="Create a schedule (validated as its jobs would be).")
    add.add_argument("name")
    add.add_argument("--cron", required=True, help="Five fields, e.g. '30 2 * * *' (quote it).")
    add.add_argument("--timezone", help="IANA time zone of the cron (default UTC).")
    add.add_argument("--image", required=True)
    add.add_argument("--command", dest="job_command", default="", help="Command (shell quoting, no shell).")
    add.add_argument("--host", help="Pin the jobs to this executor host (name).")
    add.add_argument("--template", help="Environment template (name).")
    add.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="Repeatable.")
    add.add_argument("--memory", type=positive_int, dest="memory_limit", help="Memory limit in MB.")
    add.add_argument("--cpu", type=float, dest="cpu_limit", help="CPU limit in cores.")
    add.add_argument("--timeout", type=positive_int, dest="timeout_seconds", help="Seconds per attempt.")
    add.add_argument("--max-retries", type=int, dest="max_retries")
    add.add_argument("--priority", type=int)
    add.add_argument(
        "--concurrency-policy", choices=["allow", "forbid", "replace"], help="While a run is unfinished."
    )
    add.add_argument(
        "--starting-deadline",
        type=positive_int,
        dest="starting_deadline_seconds",
        help="Skip a tick not run within this many seconds.",
    )
    add.add_argument("--paused", action="store_true", help="Create it disabled.")
    add.add_argument("--json", action="store_true")
    listing = actions.add_parser("list", help="List schedules with their next and last runs.")
    listing.add_argument("--json", action="store_true")
    for name, text in (
        ("pause", "Stop creating jobs (ticks meanwhile are skipped)."),
        ("resume", "Create jobs again, from the next tick."),
        ("delete", "Delete a schedule (its jobs stay)."),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("name")
        action.add_argument("--json", action="store_true")


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


def handle_schedule(command: Any, options: dict[str, Any], parse_env: Any) -> None:
    """``manage_jobs schedule ACTION``; ``command`` is the running ``manage_jobs`` (its output)."""
    action = options["schedule_action"]
    if action == "list":
        _list_schedules(command, options)
        return
    if action == "add":
        schedule = _add_schedule(options, parse_env)
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
                command.emit_json(data)
            else:
                command.stdout.write(f"deleted schedule {schedule.name} (its jobs stay)")
            return
        schedule.refresh_from_db()
    if options["json"]:
        command.emit_json(_schedule_dict(schedule))
        return
    verb = {"add": "created", "pause": "paused", "resume": "resumed"}[action]
    after = f"next run {schedule.next_run_at.isoformat()}" if schedule.next_run_at else "paused"
    command.stdout.write(f"{verb} schedule {schedule.name} ({schedule.cron} {schedule.timezone}): {after}")


def _add_schedule(options: dict[str, Any], parse_env: Any) -> Any:
    from container_manager.envparse import render_env
    from container_manager.models import EnvironmentVariableTemplate, ExecutorHost, JobSchedule

    values: dict[str, Any] = {key: options[key] for key in SCHEDULE_OPTIONS if options.get(key) is not None}
    env: dict[str, str] = {}
    parse_env(options["env"], "--env", env)
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
    schedule.save()  # ValidationError: the command turns it into one line naming the fields
    return schedule


def _list_schedules(command: Any, options: dict[str, Any]) -> None:
    from container_manager.models import JobSchedule

    rows = [_schedule_dict(s) for s in JobSchedule.objects.select_related("docker_host").order_by("name")]
    if options["json"]:
        command.emit_json(rows)
        return
    command.stdout.write(
        f"{'NAME':<24} {'CRON':<16} {'TIMEZONE':<16} {'POLICY':<8} {'NEXT RUN':<26} LAST RUN"
    )
    for row in rows:
        nxt = row["next_run_at"] or "(paused)"
        last = row["last_scheduled_at"] or "-"
        note = f"  ! {row['last_error']}" if row["last_error"] else ""
        command.stdout.write(
            f"{row['name']:<24} {row['cron']:<16} {row['timezone']:<16} {row['concurrency_policy']:<8} "
            f"{nxt:<26} {last}{note}"
        )
