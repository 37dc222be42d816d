"""The ``container-manager`` console script: ``django-admin`` with the bundled settings."""

from __future__ import annotations

import os
import sys


def version() -> str:
    """What ``container-manager --version`` prints: this project's version, then Django's and Python's."""
    import django

    from container_manager import __version__

    return f"container-manager {__version__} (Django {django.get_version()}, Python {sys.version.split()[0]})"


def main(argv: list[str] | None = None) -> None:
    argv = argv if argv is not None else sys.argv
    if argv[1:] in (["--version"], ["version"]):
        # django-admin would print Django's version alone, which says nothing about this install.
        print(version())
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "container_manager.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(argv)


if __name__ == "__main__":
    main()
