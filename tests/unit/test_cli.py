"""The ``container-manager`` console script itself (``django-admin`` with the bundled settings)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "container-manager"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_version_names_this_project_then_django() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for flag in ("--version", "version"):
        result = cli(flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(
            f"container-manager {version} (Django {django.get_version()}, Python "
        )


def test_other_commands_still_reach_django() -> None:
    result = cli("help")
    assert result.returncode == 0 and "manage_jobs" in result.stdout and "process_jobs" in result.stdout
    assert cli("process_jobs", "--help").stdout.startswith("usage: container-manager process_jobs")
