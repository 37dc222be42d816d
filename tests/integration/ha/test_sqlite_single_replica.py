"""On SQLite only one daemon may run: a second one refuses to start, with a clear message.

Real subprocesses on a real SQLite file; no Docker needed (no executor host is configured).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.integration.ha.support import ROOT, cli, cli_env, wait_until


def _daemon(env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "container_manager.cli", "process_jobs", "--metrics-port", "0", *extra],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_second_daemon_on_sqlite_refuses_to_start(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    env = cli_env(f"sqlite:///{database}", tmp_path)
    cli(env, "migrate", "-v0")
    first_log = tmp_path / "first.log"
    first = _daemon(env, first_log, "--log-format", "json")
    try:
        assert wait_until(lambda: "daemon started" in first_log.read_text(), timeout=30), (
            first_log.read_text()
        )

        second = subprocess.run(
            [sys.executable, "-m", "container_manager.cli", "process_jobs", "--metrics-port", "0"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "Traceback" not in second.stderr
        message = second.stderr.strip()
        assert message.startswith("CommandError: another daemon (daemon:"), message
        assert f"already runs against the SQLite database {database}" in message
        assert "SQLite supports a single replica" in message
        assert "PostgreSQL" in message

        once = cli_run(env, "--once")
        assert once.returncode == 1 and "another daemon" in once.stderr and "Traceback" not in once.stderr

        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, first_log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    # The lock went with the first daemon: now a daemon starts again.
    assert cli_run(env, "--once").returncode == 0


def cli_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "container_manager.cli", "process_jobs", "--metrics-port", "0", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
