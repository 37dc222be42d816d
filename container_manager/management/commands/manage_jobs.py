"""``manage_jobs``: the operator's command line for jobs and hosts.

Sub-commands: submit, list, show, logs, cancel, rerun, cleanup, purge, hosts, schedule.
``--json`` gives machine-readable output. Every user mistake becomes a one-line ``CommandError``.
The workflow parts (dependencies, arrays, schedules) are in ``container_manager.management.workflows``.
"""

from __future__ import annotations

import json
import re
import sys
from argparse import ArgumentParser, ArgumentTypeError
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from container_manager.management import workflows
from container_manager.management.commands.process_jobs import positive_int
from container_manager.models import USER_EDITABLE_FIELDS
from container_manager.states import JobStatus

_DURATION_RE = re.compile(r"\A(\d+)([smhdw])\Z", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Fields of a submitted job: the model's user-editable ones, with relations named by name.
SUBMIT_FIELDS = (
    set(USER_EDITABLE_FIELDS) - {"docker_host", "environment_template", "override_environment"}
) | {
    "host",
    "template",
    "env",
    "after",
}


class DuplicateKey(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: json.loads would silently keep the last."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_env_options(items: list[str], option: str, env: dict[str, str]) -> None:
    """Add ``KEY=VALUE`` options to ``env``; a key given twice is a mistake, not "the last wins"."""
    from container_manager.envparse import KEY_RE

    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"{option}: expected KEY=VALUE, got {key[:60]!r}")
        if not KEY_RE.match(key):
            raise CommandError(
                f"{option}: {key[:60]!r} is not a variable name (letters, digits and '_', not starting with a digit)"
            )
        if key in env:
            raise CommandError(f"{option}: {key} is given twice; give each variable once")
        env[key] = value


def duration(value: str) -> timedelta:
    match = _DURATION_RE.match(value.strip())
    if not match:
        raise ArgumentTypeError(f"expected a duration like 30d, 12h, 90m or 45s, got {value!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def job_id(value: str) -> int:
    try:
        if not value.strip().isascii():
            raise ValueError(value)
        number = int(value)
    except ValueError:
        raise ArgumentTypeError(f"a job id is a number, got {value!r}") from None
    if number < 1:
        raise ArgumentTypeError(f"a job id is positive, got {number}")
    return number


def format_errors(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return "; ".join(exc.messages)


def _job_dict(job: Any) -> dict[str, Any]:
    return {
        "id": job.pk,
        "name": job.name,
        "image": job.image,
        "command": job.command,
        "status": job.status,
        "host": job.docker_host.name if job.docker_host else None,
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "exit_code": job.exit_code,
        "failure_reason": job.failure_reason,
        "memory_limit": job.memory_limit,
        "cpu_limit": job.cpu_limit,
        "timeout_seconds": job.timeout_seconds,
        "priority": job.priority,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "rerun_of": job.rerun_of_id,
        **workflows.workflow_fields(job),
    }


class Command(BaseCommand):
    help = "Submit, inspect, cancel, re-run and clean up container jobs."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        submit = sub.add_parser(
            "submit", help="Create one job, or many from a JSON-lines file (all or nothing)."
        )
        submit.add_argument("--image", help="Image reference, e.g. python:3.12-slim.")
        submit.add_argument(
            "--command", dest="job_command", default="", help="Command (shell quoting, no shell)."
        )
        submit.add_argument("--name", default="")
        submit.add_argument("--host", help="Pin to this executor host (name).")
        submit.add_argument("--template", help="Environment template (name).")
        submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="Repeatable.")
        submit.add_argument(
            "--secret-env",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Like --env, and the value is marked secret: never shown by show, the admin or logs.",
        )
        submit.add_argument("--memory", type=positive_int, dest="memory_limit", help="Memory limit in MB.")
        submit.add_argument("--cpu", type=float, dest="cpu_limit", help="CPU limit in cores.")
        submit.add_argument(
            "--timeout", type=positive_int, dest="timeout_seconds", help="Seconds per attempt."
        )
        submit.add_argument("--max-retries", type=int, dest="max_retries")
        submit.add_argument("--priority", type=int)
        submit.add_argument("--file", help="JSON-lines file, one job object per line ('-' = stdin).")
        workflows.add_submit_arguments(submit, job_id)
        submit.add_argument("--json", action="store_true", help="Print the created jobs as JSON.")

        lst = sub.add_parser("list", help="List jobs, newest first.")
        lst.add_argument("--status", choices=[s.value for s in JobStatus], action="append")
        lst.add_argument("--host", help="Jobs pinned to or run on this host.")
        lst.add_argument("--recent", type=duration, help="Only jobs created within this duration (e.g. 24h).")
        lst.add_argument("--limit", type=positive_int, default=50)
        lst.add_argument("--array", type=positive_int, metavar="ID", help="Only the jobs of this job array.")
        lst.add_argument("--json", action="store_true")

        show = sub.add_parser("show", help="Show a job with its attempts and history.")
        show.add_argument("job_id", type=job_id)
        show.add_argument("--json", action="store_true")

        logs = sub.add_parser("logs", help="Print a job's output (latest attempt).")
        logs.add_argument("job_id", type=job_id)
        logs.add_argument("--stream", choices=["all", "stdout", "stderr"], default="all")
        logs.add_argument("--tail", type=positive_int, help="Only the last N lines.")
        logs.add_argument("--follow", action="store_true", help="Follow a running container's output.")

        cancel = sub.add_parser("cancel", help="Request cancellation of jobs.")
        cancel.add_argument("job_ids", type=job_id, nargs="+")
        cancel.add_argument("--json", action="store_true")

        rerun = sub.add_parser("rerun", help="Create a new pending job with a finished job's settings.")
        rerun.add_argument("job_id", type=job_id)
        rerun.add_argument("--json", action="store_true")

        cleanup = sub.add_parser("cleanup", help="Remove labelled containers that belong to no live attempt.")
        cleanup.add_argument("--host", action="append", default=[], help="Only this host (repeatable).")
        cleanup.add_argument("--dry-run", action="store_true")
        cleanup.add_argument("--json", action="store_true")

        purge = sub.add_parser("purge", help="Delete finished jobs (and their attempts and history).")
        purge.add_argument("--older-than", type=duration, required=True, help="e.g. 30d, 12h.")
        purge.add_argument(
            "--status", choices=["completed", "failed", "timeout", "cancelled"], action="append"
        )
        purge.add_argument("--dry-run", action="store_true")
        purge.add_argument("--batch-size", type=positive_int, default=1000)
        purge.add_argument("--json", action="store_true")

        hosts = sub.add_parser("hosts", help="List executor hosts with health and load.")
        hosts.add_argument(
            "--check", action="store_true", help="Run a health check on each active host first."
        )
        hosts.add_argument("--json", action="store_true")

        workflows.add_schedule_parser(sub, positive_int)

    def handle(self, *args: Any, **options: Any) -> None:
        from container_manager.logconfig import configure

        configure("auto", "WARNING")  # library warnings go to stderr like the daemon's; output stays clean
        action = options["action"]
        handler = getattr(self, f"do_{action}")
        try:
            handler(options)
        except ValidationError as exc:
            raise CommandError(format_errors(exc)) from None

    # Output helpers -------------------------------------------------------------------

    def emit_json(self, data: Any) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str))

    def progress(self, done: int, total: int, label: str) -> None:
        if total and sys.stderr.isatty():
            sys.stderr.write(f"\r{label}: {done}/{total} ({100 * done // total}%)")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    # Actions --------------------------------------------------------------------------

    def _build_job(self, spec: dict[str, Any], where: str) -> Any:
        from container_manager.envparse import KEY_RE, render_env
        from container_manager.models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost

        unknown = set(spec) - SUBMIT_FIELDS
        if unknown:
            raise CommandError(f"{where}: unknown fields {sorted(unknown)}; allowed: {sorted(SUBMIT_FIELDS)}")
        values = {
            k: v for k, v in spec.items() if k not in ("host", "template", "env", "after") and v is not None
        }
        if isinstance(values.get("run_after"), str):
            try:
                parsed = parse_datetime(values["run_after"])
            except ValueError:  # well formed but not a date, e.g. month 13
                parsed = None
            if parsed is None:
                raise CommandError(f"{where}: run_after: expected an ISO 8601 date-time")
            values["run_after"] = parsed
        for field in ("host", "template"):
            if spec.get(field) is not None and not isinstance(spec[field], str):
                raise CommandError(f"{where}: {field}: expected a name (text)")
        job = ContainerJob(**values)
        if spec.get("host"):
            try:
                job.docker_host = ExecutorHost.objects.get(name=spec["host"])
            except ExecutorHost.DoesNotExist:
                raise CommandError(f"{where}: host: no executor host named {spec['host']!r}") from None
        if spec.get("template"):
            try:
                job.environment_template = EnvironmentVariableTemplate.objects.get(name=spec["template"])
            except EnvironmentVariableTemplate.DoesNotExist:
                raise CommandError(
                    f"{where}: template: no environment template named {spec['template']!r}"
                ) from None
        env = spec.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise CommandError(f"{where}: env: expected an object of string values")
        bad = [k for k in env if not KEY_RE.match(k)]
        if bad:
            raise CommandError(f"{where}: env: {bad[0][:60]!r} is not a variable name")
        job.override_environment = render_env(env)
        job.created_by = "cli"
        return job

    def do_submit(self, options: dict[str, Any]) -> None:
        from container_manager.models import ContainerJob

        workflows.check_submit_options(options)
        if options["file"]:
            specs = self._read_jsonl(options["file"])
        else:
            if not options["image"]:
                raise CommandError("submit: give --image (or --file with one job per line)")
            env: dict[str, str] = {}
            parse_env_options(options["env"], "--env", env)
            plain = set(env)
            parse_env_options(options["secret_env"], "--secret-env", env)
            secret = [key for key in env if key not in plain]
            specs = [
                {
                    "image": options["image"],
                    "command": options["job_command"],
                    "name": options["name"],
                    "host": options["host"],
                    "template": options["template"],
                    "env": env,
                    "secret_keys": secret or None,
                    "memory_limit": options["memory_limit"],
                    "cpu_limit": options["cpu_limit"],
                    "timeout_seconds": options["timeout_seconds"],
                    "max_retries": options["max_retries"],
                    "priority": options["priority"],
                    "after": options["after"],
                }
            ]
        where = (lambda i: f"line {i}") if options["file"] else (lambda i: "submit")
        jobs = [self._build_job(spec, where(i)) for i, spec in enumerate(specs, start=1)]
        after = [workflows.dependency_ids(spec, where(i)) for i, spec in enumerate(specs, start=1)]
        if options["array"] is not None:
            array = workflows.submit_array(jobs[0], options)
            if options["json"]:
                self.emit_json([_job_dict(job) for job in array.jobs.order_by("array_index")])
            else:
                self.stdout.write(workflows.created_array_line(array))
            return
        errors = []
        for index, job in enumerate(jobs, start=1):
            try:
                job.prepare_for_insert()
            except ValidationError as exc:
                errors.append(f"{where(index)}: {format_errors(exc)}")
            self.progress(index, len(jobs), "validating")
        if len(errors) == 1:
            raise CommandError(f"nothing was created: {errors[0]}")
        if errors:
            raise CommandError("nothing was created:\n" + "\n".join(errors))
        with transaction.atomic():
            created = ContainerJob.objects.bulk_create(jobs, batch_size=500)
            workflows.save_dependencies(created, after)
        if options["json"]:
            self.emit_json([_job_dict(job) for job in created])
        else:
            for job in created:
                self.stdout.write(f"created job {job.pk} ({job.image})")

    def _read_jsonl(self, path: str) -> list[dict[str, Any]]:
        try:
            handle = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"--file: cannot read {path}: {exc.strerror}") from None
        specs = []
        with handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                try:
                    spec = json.loads(line, object_pairs_hook=_unique_object, parse_constant=_no_constant)
                except json.JSONDecodeError as exc:
                    raise CommandError(f"line {lineno}: not valid JSON ({exc.msg})") from None
                except DuplicateKey as exc:
                    raise CommandError(f"line {lineno}: {exc} is given twice in one object") from None
                except (ValueError, RecursionError) as exc:
                    raise CommandError(f"line {lineno}: not valid JSON ({exc})") from None
                if not isinstance(spec, dict):
                    raise CommandError(f"line {lineno}: expected a JSON object")
                specs.append(spec)
        if not specs:
            raise CommandError("--file: no jobs found")
        return specs

    def _get_job(self, pk: int) -> Any:
        from container_manager.models import ContainerJob

        try:
            return ContainerJob.objects.select_related("docker_host", "schedule", "array").get(pk=pk)
        except ContainerJob.DoesNotExist:
            raise CommandError(f"no job with id {pk}") from None

    def do_list(self, options: dict[str, Any]) -> None:
        from container_manager.models import ContainerJob

        jobs = ContainerJob.objects.select_related("docker_host", "schedule").prefetch_related("depends_on")
        array = workflows.array_of(options["array"]) if options["array"] else None
        if array is not None:
            jobs = jobs.filter(array=array)
        if options["status"]:
            jobs = jobs.filter(status__in=options["status"])
        if options["host"]:
            from container_manager.models import ExecutorHost

            if not ExecutorHost.objects.filter(name=options["host"]).exists():
                raise CommandError(f"--host: no executor host named {options['host']!r}")
            jobs = jobs.by_host(options["host"])
        if options["recent"]:
            jobs = jobs.recent(hours=options["recent"].total_seconds() / 3600)
        rows = list(jobs.order_by("-created_at", "-id")[: options["limit"]])
        if options["json"]:
            self.emit_json([_job_dict(job) for job in rows])
            return
        if array is not None:
            self.stdout.write(array.summary())
        self.stdout.write(f"{'ID':>7}  {'STATUS':<10} {'ATT':>3}  {'EXIT':>4}  {'HOST':<16} IMAGE")
        for job in rows:
            host = job.docker_host.name if job.docker_host else "-"
            code = "" if job.exit_code is None else str(job.exit_code)
            self.stdout.write(
                f"{job.pk:>7}  {job.status:<10} {job.attempts:>3}  {code:>4}  {host:<16} {job.image}"
            )

    def do_show(self, options: dict[str, Any]) -> None:
        job = self._get_job(options["job_id"])
        executions = list(job.executions.order_by("attempt"))
        events = list(job.events.order_by("at", "id"))
        try:
            env: dict[str, str] | str = job.get_safe_environment_variables()
        except ValidationError as exc:
            # A row broken by SQL: say so, and still show the rest of the job.
            env = f"(not shown: {format_errors(exc)})"
        if options["json"]:
            data = _job_dict(job)
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
            self.emit_json(data)
            return
        for key, value in _job_dict(job).items():
            if key not in workflows.WORKFLOW_KEYS:  # said in words below
                self.stdout.write(f"{key:>16}: {'' if value is None else value}")
        for label, text in workflows.workflow_lines(job):
            self.stdout.write(f"{label:>16}: {text}")
        if isinstance(env, str):
            self.stdout.write(f"{'environment':>16}: {env}")
        elif env:
            self.stdout.write(f"{'environment':>16}: " + ", ".join(f"{k}={v}" for k, v in env.items()))
        self.stdout.write("\nattempts:")
        for e in executions:
            self.stdout.write(
                f"  #{e.attempt} {e.status:<9} host={e.host_name} exit={e.exit_code} reason={e.reason or '-'} "
                f"{e.message}"
            )
        self.stdout.write("\nhistory:")
        for ev in events:
            arrow = f"{ev.from_status or '-'} -> {ev.to_status}" if ev.to_status else "note"
            self.stdout.write(
                f"  {ev.at:%Y-%m-%d %H:%M:%S} {arrow:<24} {ev.actor:<28} {ev.reason} {ev.message}"
            )

    def do_logs(self, options: dict[str, Any]) -> None:
        job = self._get_job(options["job_id"])
        if options["follow"]:
            execution = job.latest_execution
            if execution is None:
                raise CommandError(f"job {job.pk} has not started yet")
            for stream, text in execution.stream_logs(follow=True):
                if options["stream"] in ("all", stream):
                    (self.stdout if stream == "stdout" else self.stderr).write(text, ending="")
            return
        self.stdout.write(job.get_logs(stream=options["stream"], tail=options["tail"]), ending="")

    def do_cancel(self, options: dict[str, Any]) -> None:
        from container_manager.services import request_cancel

        results = {}
        for pk in options["job_ids"]:
            job = self._get_job(pk)
            results[pk] = request_cancel(job.pk, actor="cli")
        if options["json"]:
            self.emit_json({str(k): v for k, v in results.items()})
            return
        for pk, changed in results.items():
            self.stdout.write(f"job {pk}: " + ("cancellation requested" if changed else "already finished"))

    def do_rerun(self, options: dict[str, Any]) -> None:
        from container_manager.exceptions import JobStateError

        job = self._get_job(options["job_id"])
        try:
            new = job.rerun(actor="cli")
        except JobStateError as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.emit_json(_job_dict(new))
        else:
            self.stdout.write(f"job {job.pk} re-run as job {new.pk}")

    def do_cleanup(self, options: dict[str, Any]) -> None:
        from reconciler.orphans import remove_orphans

        removed = remove_orphans(
            host_names=options["host"], dry_run=options["dry_run"], progress=self.progress
        )
        if options["json"]:
            self.emit_json(removed)
            return
        verb = "would remove" if options["dry_run"] else "removed"
        for host, name in removed:
            self.stdout.write(f"{verb} {name} on {host}")
        self.stdout.write(f"{len(removed)} orphan container(s) {verb}")

    def do_purge(self, options: dict[str, Any]) -> None:
        from container_manager.models import ContainerJob

        cutoff = timezone.now() - options["older_than"]
        jobs = ContainerJob.objects.terminal().filter(finished_at__lt=cutoff)
        if options["status"]:
            jobs = jobs.filter(status__in=options["status"])
        total = jobs.count()
        deleted = 0
        if not options["dry_run"]:
            while True:
                batch = list(jobs.order_by("id").values_list("id", flat=True)[: options["batch_size"]])
                if not batch:
                    break
                with transaction.atomic():
                    ContainerJob.objects.filter(pk__in=batch).delete()
                deleted += len(batch)
                self.progress(deleted, total, "purging")
        if options["json"]:
            self.emit_json({"matched": total, "deleted": deleted, "dry_run": options["dry_run"]})
        elif options["dry_run"]:
            self.stdout.write(f"{total} finished job(s) older than {options['older_than']} would be deleted")
        else:
            self.stdout.write(f"deleted {deleted} finished job(s) older than {options['older_than']}")

    def do_schedule(self, options: dict[str, Any]) -> None:
        workflows.handle_schedule(self, options, parse_env_options)

    def do_hosts(self, options: dict[str, Any]) -> None:
        from container_manager.models import ExecutorHost

        hosts = list(ExecutorHost.objects.with_running_count().order_by("name"))
        if options["check"]:
            for host in hosts:
                if host.is_active:
                    host.health_check()
        data = [
            {
                "name": h.name,
                "type": h.executor_type,
                "active": h.is_active,
                "health": h.health_status,
                "last_health_check": h.last_health_check,
                "running": getattr(h, "running_jobs", 0),
                "max_concurrent_jobs": h.effective_max_concurrent_jobs,
                "message": h.health_message,
            }
            for h in hosts
        ]
        if options["json"]:
            self.emit_json(data)
            return
        self.stdout.write(f"{'NAME':<20} {'TYPE':<9} {'ACTIVE':<6} {'HEALTH':<9} {'LOAD':>7}  MESSAGE")
        for row in data:
            load = f"{row['running']}/{row['max_concurrent_jobs']}"
            self.stdout.write(
                f"{row['name']:<20} {row['type']:<9} {row['active']!s:<6} {row['health']:<9} {load:>7}  {row['message']}"
            )
