"""What a sub-command of ``manage_jobs`` is: a name, a help line, an example, two functions."""

from __future__ import annotations

from argparse import ArgumentParser
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from container_manager.management.jobcli.common import Output


@dataclass(frozen=True)
class Subcommand:
    name: str
    #: one line for ``manage_jobs --help``.
    help: str
    #: one command line after ``manage_jobs``, shown at the end of the sub-command's ``--help``.
    example: str
    #: adds the sub-command's arguments to its parser.
    arguments: Callable[[ArgumentParser], None]
    #: runs it; returns the process exit code (None = 0).
    run: Callable[[Output, dict[str, Any]], int | None]
    #: text after the example in ``--help`` (exit codes, formats).
    epilog: str = ""


REGISTRY: dict[str, Subcommand] = {}


def register(command: Subcommand) -> Subcommand:
    if command.name in REGISTRY:
        raise ValueError(f"manage_jobs {command.name} is registered twice")
    REGISTRY[command.name] = command
    return command
