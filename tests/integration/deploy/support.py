"""Helpers of the deployment tests: the ``docker`` command, and the product's own command line on
the host, against the PostgreSQL database that the containerised daemon uses.

A user's view: jobs are submitted and read back with ``container-manager manage_jobs`` (the
host's installation, this checkout's virtualenv); executor hosts are rows made in
``container-manager shell`` as API.md shows. Nothing here imports the reconciler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.ha.support import wait_until

ROOT = Path(__file__).resolve().parents[3]
HOST_CLI = Path(sys.executable).with_name("container-manager")
TERMINAL = ("completed", "failed", "timeout", "cancelled")
#: on every container these tests start themselves (daemons, systemd), for cleanup.
TEST_LABEL = "container-manager.test=deploy"


def docker(*args: str, timeout: float = 120, check: bool = True, stdin: str | None = None) -> str:
    """``docker ARGS``; its stdout (stripped). Raises with stderr when it fails and ``check``."""
    result = subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout.strip()


def inspect(container: str, template: str) -> str:
    return docker("inspect", "-f", template, container)


def container_logs(name: str) -> str:
    """What a container wrote, stdout and stderr interleaved (for failure messages)."""
    result = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def proc_status(pid: int | str, read: Callable[[str], str] | None = None) -> dict[str, str]:
    """``/proc/PID/status`` as a dict (``read`` reads a path elsewhere, e.g. inside a container)."""
    path = f"/proc/{pid}/status"
    text = read(path) if read else Path(path).read_text()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def children(pid: int) -> list[int]:
    """The host pids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if proc_status(entry.name).get("PPid") == str(pid):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """``wait_until`` at a pace fit for predicates that start a process (docker, the CLI)."""
    return wait_until(predicate, timeout, interval)


def socket_gid() -> int:
    return os.stat("/var/run/docker.sock").st_gid


def remove_test_containers(names: Iterable[str]) -> None:
    for name in names:
        docker("rm", "--force", "--volumes", name, check=False, timeout=60)


@dataclass
class Site:
    """One installation as its users see it: a database, an instance label, a data directory."""

    database_url: str
    instance: str
    home: Path

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        env.update(
            DATABASE_URL=self.database_url,
            CONTAINER_MANAGER_HOME=str(self.home),
            CONTAINER_MANAGER_INSTANCE=self.instance,
            DJANGO_SETTINGS_MODULE="container_manager.settings",
        )
        return env

    def cli(self, *args: str, timeout: float = 120) -> str:
        """``container-manager ARGS`` on the host; its stdout."""
        result = subprocess.run(
            [str(HOST_CLI), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(
                f"container-manager {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def add_docker_host(self, name: str, connection_string: str = "unix:///var/run/docker.sock") -> None:
        self.cli(
            "shell",
            "-c",
            "from container_manager.models import ExecutorHost\n"
            f"ExecutorHost.objects.create(name={name!r}, executor_type='docker',"
            f" connection_string={connection_string!r}, max_concurrent_jobs=4)\n",
        )

    def set_host_active(self, name: str, active: bool) -> None:
        self.cli(
            "shell",
            "-c",
            "from container_manager.models import ExecutorHost\n"
            f"assert ExecutorHost.objects.filter(name={name!r}).update(is_active={active!r}) == 1\n",
        )

    def submit(self, image: str, command: str, host: str, count: int = 1) -> list[int]:
        lines = [
            json.dumps(
                {"image": image, "command": command, "host": host, "memory_limit": 32, "cpu_limit": 0.2,
                 "timeout_seconds": 120, "max_retries": 0}
            )
            for _ in range(count)
        ]  # fmt: skip
        result = subprocess.run(
            [str(HOST_CLI), "manage_jobs", "submit", "--file", "-", "--json"],
            input="\n".join(lines) + "\n",
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return [job["id"] for job in json.loads(result.stdout)]

    def jobs(self) -> dict[int, dict[str, Any]]:
        """Every job, by id (``manage_jobs list --json``)."""
        return {
            job["id"]: job for job in json.loads(self.cli("manage_jobs", "list", "--json", "--limit", "1000"))
        }

    def show(self, job_id: int) -> dict[str, Any]:
        return dict(json.loads(self.cli("manage_jobs", "show", str(job_id), "--json")))

    def logs(self, job_id: int) -> str:
        return self.cli("manage_jobs", "logs", str(job_id))

    def statuses(self, ids: Iterable[int]) -> list[str]:
        jobs = self.jobs()
        return [jobs[i]["status"] for i in ids]

    def wait_status(self, ids: list[int], wanted: Iterable[str], timeout: float) -> bool:
        wanted = set(wanted)
        return bool(poll(lambda: all(s in wanted for s in self.statuses(ids)), timeout, interval=1.0))

    def wait_any_running(self, ids: list[int], at_least: int, timeout: float) -> bool:
        return bool(poll(lambda: self.statuses(ids).count("running") >= at_least, timeout, interval=0.5))
