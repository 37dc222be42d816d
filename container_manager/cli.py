"""The ``container-manager`` console script: ``django-admin`` with the bundled settings."""

from __future__ import annotations

import os
import sys

from django.core.exceptions import ImproperlyConfigured


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

    if os.environ["DJANGO_SETTINGS_MODULE"] == "container_manager.settings":
        # The bundled settings check the data directory on import: say what is wrong in one
        # line, as for any other user mistake, instead of a traceback from inside Django.
        try:
            import container_manager.settings  # noqa: F401
        except ImproperlyConfigured as exc:
            sys.stderr.write(f"container-manager: {exc}\n")
            raise SystemExit(2) from None
    execute_from_command_line(argv)


if __name__ == "__main__":
    main()
