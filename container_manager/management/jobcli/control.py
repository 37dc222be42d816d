"""``cancel``, ``rerun`` and ``wait``: act on jobs by id, and block until they end."""

from __future__ import annotations

import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from container_manager.management.jobcli.common import (
    EXIT_CODES_HELP,
    EXIT_WAIT_TIMEOUT,
    Output,
    ended,
    existing_jobs,
    exit_code_of,
    get_job,
    job_dict,
    job_id,
    positive_float,
)
from container_manager.management.jobcli.registry import Subcommand, register

#: Seconds between two looks at the jobs being waited for (the daemon does the work).
WAIT_POLL_SECONDS = 0.5


def wait_for(out: Output, pks: list[int], timeout: float | None, *, quiet: bool = False) -> int:
    """Block until every job in ``pks`` is terminal (or ``timeout`` passes); the exit code.

    Each job is reported on stderr as it ends; the exit code is that of the first job, in the
    order given, that did not complete (``EXIT_CODES_HELP``).
    """
    from container_manager.models import ContainerJob

    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(dict.fromkeys(pks))
    finished: dict[int, Any] = {}
    while pending:
        for job in ContainerJob.objects.terminal().filter(pk__in=pending):
            finished[job.pk] = job
            if not quiet:
                out.note(ended(job))
        pending = [pk for pk in pending if pk not in finished]
        if not pending:
            break
        if deadline is not None and time.monotonic() >= deadline:
            out.note(
                f"gave up waiting after {timeout:g} s: job(s) {', '.join(map(str, pending))} not finished"
            )
            return EXIT_WAIT_TIMEOUT
        time.sleep(WAIT_POLL_SECONDS)
    codes = [exit_code_of(finished[pk]) for pk in dict.fromkeys(pks)]
    return next((code for code in codes if code), 0)


def wait_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("job_ids", type=job_id, nargs="+", metavar="JOB_ID", help="one or more jobs")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="give up after this long (default: no limit)",
    )
    parser.add_argument("--json", action="store_true", help="print the jobs as JSON once they have finished")


def wait_run(out: Output, options: dict[str, Any]) -> int:
    jobs = existing_jobs(options["job_ids"])
    code = wait_for(out, [job.pk for job in jobs], options["timeout"], quiet=options["json"])
    if options["json"] and code != EXIT_WAIT_TIMEOUT:
        out.emit_json([job_dict(get_job(job.pk)) for job in jobs])
    return code


def cancel_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("job_ids", type=job_id, nargs="+", metavar="JOB_ID", help="one or more jobs")
    parser.add_argument("--json", action="store_true", help="JSON output: {id: cancellation recorded}")


def cancel_run(out: Output, options: dict[str, Any]) -> None:
    from container_manager.services import request_cancel

    jobs = existing_jobs(options["job_ids"])  # every id is checked before any job is touched
    results = {job.pk: request_cancel(job.pk, actor="cli") for job in jobs}
    if options["json"]:
        out.emit_json({str(k): v for k, v in results.items()})
        return
    for job in jobs:
        if results[job.pk]:
            out.line(f"job {job.pk}: cancellation requested")
        else:
            job.refresh_from_db()
            out.line(f"job {job.pk}: already finished ({job.status})")


def rerun_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("job_id", type=job_id, metavar="JOB_ID", help="a finished job")
    parser.add_argument("--json", action="store_true", help="print the new job as JSON")


def rerun_run(out: Output, options: dict[str, Any]) -> None:
    from container_manager.exceptions import JobStateError

    job = get_job(options["job_id"])
    try:
        new = job.rerun(actor="cli")
    except JobStateError as exc:
        raise CommandError(str(exc)) from None
    if options["json"]:
        out.emit_json(job_dict(new))
    else:
        out.line(f"job {job.pk} re-run as job {new.pk}")


register(
    Subcommand(
        name="cancel",
        help="request cancellation of jobs (every id is checked first)",
        example="cancel 42 43",
        arguments=cancel_arguments,
        run=cancel_run,
    )
)
register(
    Subcommand(
        name="rerun",
        help="create a new pending job with a finished job's settings",
        example="rerun 42",
        arguments=rerun_arguments,
        run=rerun_run,
    )
)
register(
    Subcommand(
        name="wait",
        help="block until jobs have finished; exit with their outcome",
        example="wait 42 43 --timeout 600",
        arguments=wait_arguments,
        run=wait_run,
        epilog=EXIT_CODES_HELP[0].upper() + EXIT_CODES_HELP[1:],
    )
)
