"""Helpers of the high-availability tests: replicas as real ``process_jobs`` subprocesses.

Every replica is a separate process with its own log file and metrics port, talking to one
real PostgreSQL database. The tests read the outcome straight from the database with psycopg
(no Django in the test process for that database), and from Docker's event stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from executors.types import LABEL_INSTANCE
from tests.components import free_port

ROOT = Path(__file__).resolve().parents[3]
TERMINAL = ("completed", "failed", "timeout", "cancelled")


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; returns it (or the last falsy value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def cli_env(database_url: str, home: Path, instance: str = "default") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(
        DATABASE_URL=database_url,
        CONTAINER_MANAGER_HOME=str(home),
        CONTAINER_MANAGER_INSTANCE=instance,
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="container_manager.settings",
    )
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "container_manager.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"container-manager {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def query(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@dataclass
class Replica:
    """One ``process_jobs`` subprocess."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log records (lines that do not parse are skipped)."""
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str, labels: str = "") -> float | None:
        """One sample of this replica's /metrics (``labels`` as written there, e.g. 'change="lost"')."""
        _, body = self.get("/metrics")
        wanted = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in body.splitlines():
            if line.startswith(wanted):
                return float(line.split()[-1])
        return None

    def hosts_owned(self) -> int | None:
        value = self.metric("container_manager_hosts_owned")
        return None if value is None else int(value)

    def role(self) -> str | None:
        status, body = self.get("/readyz")
        if not status:
            return None
        try:
            return str(json.loads(body)["role"])
        except (ValueError, KeyError):
            return None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """Make sure the process is gone (resume it first if it was stopped)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class Cluster:
    """The replicas of one test, on one database and one instance label."""

    database_url: str
    instance: str
    home: Path
    lease_seconds: float
    replicas: list[Replica] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return cli_env(self.database_url, self.home, self.instance)

    def start(self, name: str, *extra: str) -> Replica:
        port = free_port()
        log_path = self.home / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "container_manager.cli", "process_jobs",
                    "--metrics-port", str(port),
                    "--lease-seconds", str(self.lease_seconds),
                    "--poll-interval", "0.2",
                    "--resync-interval", "5",
                    "--workers", "4",
                    "--log-format", "json",
                    *extra,
                ],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        replica = Replica(name, proc, log_path, port)
        self.replicas.append(replica)
        return replica

    def add_docker_hosts(self, count: int, capacity: int = 10) -> list[str]:
        """More executor hosts on the local Docker daemon (each one a host to share out)."""
        names = [f"docker-{index}" for index in range(count)]
        for name in names:
            query(
                self.database_url,
                "INSERT INTO container_manager_executorhost (name, executor_type, connection_string,"
                " executor_config, is_active, health_status, health_message, max_concurrent_jobs,"
                " description, created_at) VALUES (%s, 'docker', '', '{}', true, 'unknown', '', %s, '', now())",
                [name, capacity],
            )
        return names

    def host_owners(self) -> dict[int, str]:
        """host pk -> the holder of its live lease."""
        rows = query(
            self.database_url,
            "SELECT name, holder FROM container_manager_leaderlease"
            " WHERE name LIKE '%%:host:%%' AND expires_at > clock_timestamp()",
        )
        return {int(name.rsplit(":", 1)[1]): holder for name, holder in rows}

    def holder_pid(self) -> int | None:
        """The pid in the live lease's holder id ("daemon:<host>:<pid>:<token>"), or None."""
        rows = query(
            self.database_url,
            "SELECT holder FROM container_manager_leaderlease"
            " WHERE name NOT LIKE '%%:%%' AND expires_at > clock_timestamp()",
        )
        return int(rows[0][0].split(":")[2]) if rows else None

    def wait_leader(self, among: Sequence[Replica], timeout: float) -> Replica | None:
        pids = {r.pid: r for r in among}
        pid = wait_until(lambda: (p := self.holder_pid()) in pids and p, timeout)
        return pids.get(pid) if pid else None

    def submit(self, count: int, command: str, image: str) -> list[int]:
        script = (
            "from container_manager.models import ContainerJob\n"
            f"for _ in range({count}):\n"
            f"    j = ContainerJob.objects.create(image={image!r}, command={command!r}, memory_limit=32,"
            " cpu_limit=0.2, max_retries=0)\n"
            "    print('JOB', j.pk)\n"
        )
        out = cli(self.env, "shell", "-c", script).stdout
        return [int(line.split()[1]) for line in out.splitlines() if line.startswith("JOB ")]

    def statuses(self) -> Counter[str]:
        rows = query(
            self.database_url, "SELECT status, count(*) FROM container_manager_containerjob GROUP BY 1"
        )
        return Counter({status: count for status, count in rows})

    def all_finished(self, total: int) -> bool:
        counts = self.statuses()
        return sum(counts[s] for s in TERMINAL) == total

    def cleanup(self) -> None:
        for replica in self.replicas:
            try:
                replica.stop()
            except Exception:
                pass

    def dump_logs(self) -> str:
        return "\n".join(f"==== {r.name} (pid {r.pid}) ====\n{r.log()[-6000:]}" for r in self.replicas)


class CreateEvents:
    """Counts Docker 'create' events of one instance's containers, from a background thread."""

    def __init__(self, instance: str) -> None:
        import docker

        self.client = docker.APIClient(timeout=None)
        self.names: Counter[str] = Counter()
        self._stream = self.client.events(
            decode=True,
            filters={"type": "container", "event": "create", "label": f"{LABEL_INSTANCE}={instance}"},
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                name = event.get("Actor", {}).get("Attributes", {}).get("name")
                if name:
                    self.names[name] += 1
        except Exception:
            pass

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception:
            pass
        self._thread.join(5)
        self.client.close()


@contextmanager
def create_events(instance: str) -> Iterator[CreateEvents]:
    events = CreateEvents(instance)
    try:
        yield events
    finally:
        events.close()


def remove_containers(instance: str) -> None:
    import docker

    client = docker.APIClient()
    try:
        for container in client.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}):
            try:
                client.remove_container(container["Id"], force=True)
            except docker.errors.APIError:
                pass
    finally:
        client.close()
