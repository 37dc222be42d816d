"""``logs``: a job's output; with ``--follow``, as kubectl does, until the job has finished.

``--follow`` waits for a job that has not started, prints the last ``--tail`` lines of the
running attempt and then what it writes, goes on with the next attempt when one is retried,
and ends each attempt with a one-line summary on stderr ("attempt 1 exited 3; retry in 3 s").
Live output is read as bounded tails through the models (``job.get_logs()``) every
``FOLLOW_POLL_SECONDS``, the same way on every backend; only what is new is printed.
"""

from __future__ import annotations

import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError
from django.utils import timezone

from container_manager.management.jobcli.common import Output, get_job, job_id, positive_int
from container_manager.management.jobcli.registry import Subcommand, register
from container_manager.states import JobStatus

#: Seconds between two reads of a running attempt's output (and two looks at a waiting job).
FOLLOW_POLL_SECONDS = 1.0
#: Places tried to line a new read up with the previous one (bounds the work on repetitive output).
_MAX_ALIGNMENTS = 1000
SKIPPED = "[... output skipped: more than the kept tail was written between two reads ...]\n"


def arguments(parser: ArgumentParser) -> None:
    parser.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job")
    parser.add_argument(
        "--stream", choices=["all", "stdout", "stderr"], default="all", help="which output (default: all)"
    )
    parser.add_argument("--tail", type=positive_int, help="only the last N lines (default: all that is kept)")
    parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="wait for the job to start, follow its output and its retries until it has finished",
    )
    parser.add_argument(
        "--attempt", type=positive_int, metavar="N", help="this attempt instead of the latest (1 = the first)"
    )


def last_lines(text: str, count: int | None) -> str:
    if count is None or not text:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[-count:])


def new_part(before: str, now: str) -> str:
    """What ``now`` (a bounded tail read later) adds to ``before``.

    The later tail starts somewhere inside the earlier one (the window slid forward) or at the
    same place: the first position of ``before`` from which the rest of it begins ``now`` marks
    the overlap. Output that cannot be lined up (more than a whole tail written in between)
    is printed whole after a marker.
    """
    if not before or now.startswith(before):
        return now[len(before) :]
    if not now:
        return ""
    # The start of the new read (its first line, at most 64 characters) must be in the old one.
    probe = now[: min(64, now.find("\n") + 1 or 64)]
    start = before.find(probe)
    for _ in range(_MAX_ALIGNMENTS):
        if start < 0:
            break
        if now.startswith(before[start:]):
            return now[len(before) - start :]
        start = before.find(probe, start + 1)
    return SKIPPED + now


def _text(job: Any, execution: Any, stream: str) -> str:
    if execution.is_live and job.latest_execution == execution:
        return str(job.get_logs(stream=stream))
    return str(getattr(execution, stream))


def _write(out: Output, stream: str, text: str) -> None:
    if text:
        (out.stdout if stream == "stdout" else out.stderr).write(text, ending="")


def summary(job: Any, execution: Any) -> str:
    """``attempt 1 exited 3; retry in 3 s`` / ``attempt 2 exited 0; job completed``."""
    code = execution.exit_code
    if execution.oom_killed:
        what = f"was killed for using too much memory (exit {code})"
    elif execution.status == "timeout":
        what = "timed out"
    elif execution.status == "cancelled":
        what = "was cancelled"
    elif code is not None:
        what = f"exited {code}"
    else:
        what = f"failed ({execution.reason or 'no exit code'})"
    if job.status == JobStatus.RETRYING:
        wait = 0.0 if job.run_after is None else (job.run_after - timezone.now()).total_seconds()
        then = f"retry in {max(0, round(wait))} s"
    else:
        then = f"job {job.status}"
    return f"attempt {execution.attempt} {what}; {then}"


def follow_attempt(out: Output, job: Any, execution: Any, streams: list[str], tail: int | None) -> None:
    seen = dict.fromkeys(streams, "")
    first = True
    while True:
        execution.refresh_from_db()
        live = execution.is_live
        for stream in streams:
            text = _text(job, execution, stream)
            _write(out, stream, last_lines(text, tail) if first else new_part(seen[stream], text))
            seen[stream] = text
        first = False
        if not live:
            return
        time.sleep(FOLLOW_POLL_SECONDS)


def follow(out: Output, job: Any, streams: list[str], tail: int | None) -> None:
    done_attempt = 0
    said_waiting = False
    while True:
        job.refresh_from_db()
        execution = job.latest_execution
        if execution is None or execution.attempt <= done_attempt:
            if job.is_terminal_status:
                if execution is None:
                    out.note(f"job {job.pk} {job.status} before any attempt started")
                return
            if not said_waiting:
                out.note(f"waiting for job {job.pk} to start ({job.status})")
                said_waiting = True
            time.sleep(FOLLOW_POLL_SECONDS)
            continue
        if done_attempt:
            out.note(f"--- attempt {execution.attempt} ---")
        follow_attempt(out, job, execution, streams, tail if not done_attempt else None)
        done_attempt = execution.attempt
        # The attempt is over; the job moves on (retrying, or terminal) in the same transaction.
        job.refresh_from_db()
        execution.refresh_from_db()
        out.note(summary(job, execution))
        if job.is_terminal_status:
            return
        said_waiting = True  # the summary said what comes next


def run(out: Output, options: dict[str, Any]) -> None:
    job = get_job(options["job_id"])
    streams = ["stdout", "stderr"] if options["stream"] == "all" else [options["stream"]]
    if options["attempt"] is not None:
        execution = job.executions.filter(attempt=options["attempt"]).first()
        if execution is None:
            raise CommandError(f"job {job.pk} has no attempt {options['attempt']} (it has {job.attempts})")
        if options["follow"]:
            follow_attempt(out, job, execution, streams, options["tail"])
            job.refresh_from_db()
            out.note(summary(job, execution))
            return
        for stream in streams:
            out.stdout.write(last_lines(_text(job, execution, stream), options["tail"]), ending="")
        return
    if options["follow"]:
        follow(out, job, streams, options["tail"])
        return
    out.stdout.write(job.get_logs(stream=options["stream"], tail=options["tail"]), ending="")


register(
    Subcommand(
        name="logs",
        help="print a job's output (latest attempt); --follow until it has finished",
        example="logs 42 --follow --tail 20",
        arguments=arguments,
        run=run,
    )
)
