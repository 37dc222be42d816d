"""``submit``: create one job from flags, or many from a JSON-lines file, all or nothing."""

from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction
from django.utils.dateparse import parse_datetime

from container_manager.management.jobcli import workflow
from container_manager.management.jobcli.common import (
    EXIT_CODES_HELP,
    Output,
    format_errors,
    job_dict,
    job_id,
    positive_float,
    positive_int,
)
from container_manager.management.jobcli.registry import Subcommand, register
from container_manager.models import USER_EDITABLE_FIELDS

#: Fields of a submitted job: the model's user-editable ones, with relations named by name.
SUBMIT_FIELDS = (
    set(USER_EDITABLE_FIELDS) - {"docker_host", "environment_template", "override_environment"}
) | {"host", "template", "env", "after"}


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


def arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--image", help="image reference, e.g. python:3.12-slim")
    parser.add_argument(
        "--command",
        dest="job_command",
        default="",
        help="command (shell quoting, no shell; default: the image's)",
    )
    parser.add_argument("--name", default="", help="a label for people (default: none)")
    parser.add_argument("--host", help="pin to this executor host, by name (default: the scheduler picks)")
    parser.add_argument("--template", help="environment template, by name (default: none)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="a variable (repeatable)"
    )
    parser.add_argument(
        "--secret-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="like --env, and the value is marked secret: never shown by show, the admin or logs",
    )
    parser.add_argument(
        "--memory", type=positive_int, dest="memory_limit", help="memory limit in MB (default: settings)"
    )
    parser.add_argument("--cpu", type=float, dest="cpu_limit", help="CPU limit in cores (default: settings)")
    parser.add_argument(
        "--timeout", type=positive_int, dest="timeout_seconds", help="seconds per attempt (default: settings)"
    )
    parser.add_argument("--max-retries", type=int, dest="max_retries", help="extra attempts (default: 0)")
    parser.add_argument("--priority", type=int, help="higher runs first (default: 0)")
    parser.add_argument("--file", help="JSON-lines file, one job object per line ('-' = stdin)")
    workflow.add_submit_arguments(parser, job_id)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate everything and say what would be created; create nothing",
    )
    parser.add_argument(
        "--wait", action="store_true", help="then wait until every created job has finished (see exit codes)"
    )
    parser.add_argument(
        "--wait-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long (default: no limit)",
    )
    parser.add_argument("--json", action="store_true", help="print the created jobs as JSON")


def build_job(spec: dict[str, Any], where: str) -> Any:
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


def read_jsonl(path: str) -> list[dict[str, Any]]:
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


def _specs_from_flags(options: dict[str, Any]) -> list[dict[str, Any]]:
    if not options["image"]:
        raise CommandError("submit: give --image (or --file with one job per line)")
    env: dict[str, str] = {}
    parse_env_options(options["env"], "--env", env)
    plain = set(env)
    parse_env_options(options["secret_env"], "--secret-env", env)
    secret = [key for key in env if key not in plain]
    return [
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


def _summary(jobs: list[Any]) -> str:
    """``3 jobs: 2 x busybox, 1 x alpine; on mock-1 (2), any host (1)``."""
    images: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for job in jobs:
        images[job.image] = images.get(job.image, 0) + 1
        host = job.docker_host.name if job.docker_host else "any host"
        hosts[host] = hosts.get(host, 0) + 1
    by_image = ", ".join(f"{n} x {image}" for image, n in sorted(images.items(), key=lambda kv: -kv[1])[:5])
    if len(images) > 5:
        by_image += f", {len(images) - 5} more image(s)"
    by_host = ", ".join(f"{host} ({n})" for host, n in sorted(hosts.items(), key=lambda kv: -kv[1])[:5])
    return f"{len(jobs)} job(s): {by_image}; on {by_host}"


def run(out: Output, options: dict[str, Any]) -> int | None:
    from container_manager.models import ContainerJob

    if options["wait_timeout"] is not None and not options["wait"]:
        raise CommandError("--wait-timeout goes with --wait")
    if options["dry_run"] and options["wait"]:
        raise CommandError("--dry-run creates nothing to wait for; give one of them")
    workflow.check_submit_options(options)
    specs = read_jsonl(options["file"]) if options["file"] else _specs_from_flags(options)
    where = (lambda i: f"line {i}") if options["file"] else (lambda i: "submit")
    jobs = [build_job(spec, where(i)) for i, spec in enumerate(specs, start=1)]
    after = [workflow.dependency_ids(spec, where(i)) for i, spec in enumerate(specs, start=1)]
    if options["array"] is not None:
        return _submit_array(out, jobs[0], options)
    errors = []
    for index, job in enumerate(jobs, start=1):
        try:
            job.prepare_for_insert()
        except ValidationError as exc:
            errors.append(f"{where(index)}: {format_errors(exc)}")
        out.progress(index, len(jobs), "validating")
    if len(errors) == 1:
        raise CommandError(f"nothing was created: {errors[0]}")
    if errors:
        raise CommandError(
            f"nothing was created: {len(errors)} of {len(jobs)} job(s) refused:\n" + "\n".join(errors)
        )
    if options["dry_run"]:
        if options["json"]:
            out.emit_json({"dry_run": True, "valid": len(jobs), "jobs": [job_dict(job) for job in jobs]})
        else:
            out.line(f"dry run: {_summary(jobs)} would be created; nothing was created")
        return None
    created: list[Any] = []
    with transaction.atomic():
        for start in range(0, len(jobs), 500):
            created += ContainerJob.objects.bulk_create(jobs[start : start + 500])
            out.progress(len(created), len(jobs), "creating")
        workflow.save_dependencies(created, after)
    if options["json"]:
        workflow.prefetch(created)
        out.emit_json([job_dict(job) for job in created])
    elif len(created) <= 20:
        for job in created:
            out.line(f"created job {job.pk} ({job.image})")
    if len(created) > 1 and not options["json"]:
        out.line(f"created {_summary(created)}; ids {created[0].pk}..{created[-1].pk}")
    if options["wait"]:
        from container_manager.management.jobcli.control import wait_for

        return wait_for(out, [job.pk for job in created], options["wait_timeout"], quiet=options["json"])
    return None


def _submit_array(out: Output, job: Any, options: dict[str, Any]) -> int | None:
    """``submit --array N``: N jobs of ``job``'s desired state, created (or refused) together."""
    if options["dry_run"]:
        job.prepare_for_insert()  # ValidationError: manage_jobs makes it one line naming the fields
        out.line(
            f"dry run: an array of {options['array']} x {job.image} would be created; nothing was created"
        )
        return None
    array = workflow.submit_array(job, options)
    members = list(array.jobs.select_related("docker_host").order_by("array_index"))
    if options["json"]:
        workflow.prefetch(members)
        out.emit_json([job_dict(member) for member in members])
    else:
        out.line(workflow.created_array_line(array))
    if options["wait"]:
        from container_manager.management.jobcli.control import wait_for

        return wait_for(out, [m.pk for m in members], options["wait_timeout"], quiet=options["json"])
    return None


register(
    Subcommand(
        name="submit",
        help="create one job, or many from a JSON-lines file (all or nothing)",
        example="submit --image busybox --command 'echo hi' --memory 128 --wait",
        arguments=arguments,
        run=run,
        epilog="With --wait, " + EXIT_CODES_HELP,
    )
)
