"""``process_jobs``: run the reconciler daemon (or one pass of it); the arguments, then ``reconciler.wiring.serve``."""

from __future__ import annotations

import math
import sys
from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.core.management.base import BaseCommand, CommandError


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(number):
        raise ArgumentTypeError(f"expected a finite number of seconds, got {value!r}")
    if number <= 0:
        raise ArgumentTypeError(f"must be greater than 0, got {number}")
    return number


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise ArgumentTypeError(f"a port is between 0 and 65535, got {number}")
    return number


def lease_name(value: str) -> str:
    if not 1 <= len(value) <= 100:
        raise ArgumentTypeError(f"a lease name has 1 to 100 characters, got {len(value)}")
    return value


class Command(BaseCommand):
    help = (
        "Run the reconciler: launch pending jobs, watch containers, enforce timeouts, retries and "
        "cancellation, and record every attempt. Stops gracefully on SIGTERM/SIGINT (a second signal forces). "
        "With several replicas one leads; a leader that loses its lease exits with status 75."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--once", action="store_true", help="Run one pass over every job with work, then exit."
        )
        mode.add_argument(
            "--until-idle",
            action="store_true",
            help="Run until no job is pending, launching, running or retrying, then exit.",
        )
        parser.add_argument("--workers", type=positive_int, default=4, help="Worker threads (default 4).")
        parser.add_argument(
            "--resync-interval",
            type=positive_float,
            default=None,
            metavar="SECONDS",
            help="Seconds between full resyncs (default: CONTAINER_MANAGER['RESYNC_SECONDS'], 30).",
        )
        parser.add_argument(
            "--poll-interval",
            type=positive_float,
            default=None,
            metavar="SECONDS",
            help="Seconds between polls for new jobs (default: CONTAINER_MANAGER['POLL_SECONDS'], 0.5).",
        )
        parser.add_argument(
            "--host",
            action="append",
            default=[],
            metavar="NAME",
            help="Only handle this executor host (repeatable; default: all active hosts).",
        )
        parser.add_argument(
            "--log-format",
            choices=["auto", "json", "console"],
            default="auto",
            help="Log format (default auto: JSON unless stderr is a terminal).",
        )
        parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        parser.add_argument(
            "--metrics-port",
            type=port,
            default=9464,
            help="Port of the /metrics, /healthz and /readyz endpoint (0 turns it off; default 9464).",
        )
        parser.add_argument(
            "--metrics-addr",
            default="127.0.0.1",
            help="Address the metrics endpoint binds (default 127.0.0.1).",
        )
        parser.add_argument(
            "--leader-election",
            choices=["auto", "off"],
            default="auto",
            help=(
                "auto (default): on PostgreSQL, replicas elect one leader through a lease and the others "
                "stand by; on SQLite, a second daemon refuses to start. off: no election (you guarantee "
                "a single replica)."
            ),
        )
        parser.add_argument(
            "--lease-seconds",
            type=positive_float,
            default=5.0,
            metavar="SECONDS",
            help="Leader lease time-to-live: a paused or hung leader is replaced after about this long "
            "(default 5; renewed every fifth of it).",
        )
        parser.add_argument(
            "--lease-name",
            type=lease_name,
            default="reconciler",
            help="Replicas sharing a lease name elect one leader (default 'reconciler').",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from reconciler.daemon import DaemonOptions
        from reconciler.exceptions import ReconcilerError
        from reconciler.wiring import serve

        daemon_options = DaemonOptions(
            workers=options["workers"],
            resync_seconds=options["resync_interval"],
            poll_seconds=options["poll_interval"],
            host_names=tuple(options["host"]),
            once=options["once"],
            until_idle=options["until_idle"],
            leader_election=options["leader_election"],
            lease_seconds=options["lease_seconds"],
            lease_name=options["lease_name"],
        )
        try:
            code = serve(
                daemon_options,
                log_format=options["log_format"],
                log_level=options["log_level"],
                metrics_addr=options["metrics_addr"],
                metrics_port=options["metrics_port"],
            )
        except ReconcilerError as exc:  # e.g. a second replica on SQLite: a message, not a traceback
            raise CommandError(str(exc)) from exc
        if code:
            sys.exit(code)
