"""The sub-commands of ``manage_jobs``, one module per group, gathered in a registry.

``manage_jobs`` builds its parser from ``REGISTRY``: a new group of sub-commands is a new
module here that calls ``register()`` for each of them, plus its name in ``MODULES``. Each
sub-command has one example, shown at the end of its ``--help``.
"""

from __future__ import annotations

import importlib

from container_manager.management.jobcli.registry import REGISTRY, Subcommand, register

#: Modules whose import registers their sub-commands, in the order ``--help`` lists them.
MODULES = ("submit", "inspect", "logs", "control", "maintenance", "schedule")


def load() -> dict[str, Subcommand]:
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return REGISTRY


__all__ = ["MODULES", "REGISTRY", "Subcommand", "load", "register"]
