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


def _env(**changes: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SECRET_KEY")}
    env.update(changes)
    return env


def test_an_unusable_data_directory_is_one_clear_line_not_a_traceback() -> None:
    unusable = "/dev/null/container-manager"  # under a file: no user, root included, can create it
    result = subprocess.run(
        [str(CLI), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=_env(CONTAINER_MANAGER_HOME=unusable),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"container-manager: data directory {unusable}: ")
    assert "CONTAINER_MANAGER_HOME" in result.stderr and "DJANGO_SECRET_KEY" in result.stderr


def test_with_a_key_and_a_database_url_the_data_directory_is_not_needed(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CLI), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=_env(
            CONTAINER_MANAGER_HOME="/dev/null/container-manager",
            DJANGO_SECRET_KEY="k" * 50,
            DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        ),
    )
    assert result.returncode == 0, result.stderr
    home = tmp_path / "home"
    result = subprocess.run(
        [str(CLI), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=_env(CONTAINER_MANAGER_HOME=str(home), DJANGO_SECRET_KEY="k" * 50),
    )
    assert result.returncode == 0, result.stderr
    assert home.is_dir()  # created for the default SQLite database


def test_processes_that_start_together_share_one_generated_secret_key(tmp_path: Path) -> None:
    """Replicas sharing a data directory start at the same instant: none may fail on the key
    file another one is creating, or read it half-written."""
    home = tmp_path / "home"
    script = "from django.conf import settings; print(settings.SECRET_KEY)"
    env = _env(
        CONTAINER_MANAGER_HOME=str(home),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DJANGO_SETTINGS_MODULE="container_manager.settings",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", f"import django; django.setup(); {script}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(8)
    ]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0] * 8, [err for _, _, err in results]
    keys = {out.strip() for _, out, _ in results}
    assert keys == {(home / "secret_key").read_text().strip()} and len(keys.pop()) >= 50
    assert [p.name for p in home.iterdir()] == ["secret_key"], "no temporary file is left behind"
    assert (home / "secret_key").stat().st_mode & 0o777 == 0o600
