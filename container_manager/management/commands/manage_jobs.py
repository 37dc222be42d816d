"""``manage_jobs``: the operator's command line for jobs and hosts.

The sub-commands live in ``container_manager.management.jobcli`` (one module per group) and
are registered there; this command only builds the parser from that registry and runs the
one asked for. ``--json`` gives machine-readable output. Every user mistake becomes a one-line
``CommandError``. ``wait`` and ``submit --wait`` exit with the outcome of the jobs.
"""

from __future__ import annotations

import textwrap
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from container_manager.management.jobcli import load
from container_manager.management.jobcli.common import Output, format_errors


class Command(BaseCommand):
    help = "Submit, follow, wait for, inspect, cancel, re-run and clean up container jobs."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        for name, command in load().items():
            epilog = f"example:\n  container-manager manage_jobs {command.example}"
            if command.epilog:
                epilog += "\n\n" + textwrap.fill(command.epilog, width=78)
            child = sub.add_parser(
                name,
                help=command.help,
                description=command.help[0].upper() + command.help[1:] + ".",
                epilog=epilog,
                formatter_class=RawDescriptionHelpFormatter,
            )
            command.arguments(child)

    def handle(self, *args: Any, **options: Any) -> None:
        from container_manager.logconfig import configure

        configure("auto", "WARNING")  # library warnings go to stderr like the daemon's; output stays clean
        command = load()[options["action"]]
        try:
            code = command.run(Output(self.stdout, self.stderr), options)
        except ValidationError as exc:
            raise CommandError(format_errors(exc)) from None
        if code:
            # wait / submit --wait: the jobs' outcome is the exit status (see their --help).
            raise SystemExit(code)
