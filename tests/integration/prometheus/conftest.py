"""Real processes for the end-to-end metrics test: the daemon (``process_jobs``) and Prometheus.

Each is a subprocess on a free loopback port, stopped (SIGTERM, then SIGKILL) by its
fixture's finalizer; their output goes to files in the test's directory and is printed when
a start-up fails. The executor is a parameter: ``mock`` always, ``docker`` where a Docker
daemon answers (it fails in CI without one, like every Docker test).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml

from tests.components import binary_available, docker_available, require

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
SCRAPE_JOB = "container-manager"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM (a graceful stop for both programs), then SIGKILL; only this one process."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cli() -> list[str]:
    script = Path(sys.executable).with_name("container-manager")
    return [str(script)] if script.exists() else [sys.executable, "-m", "container_manager.cli"]


@dataclass
class Daemon:
    url: str
    port: int
    log: Path
    executor: str
    proc: subprocess.Popen[bytes]


@dataclass
class Prometheus:
    url: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        _, body = http_get(url, timeout=10)
        result: dict[str, Any] = json.loads(body)
        return result

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def value(self, expr: str) -> float:
        """The single value of ``expr`` now, or 0 when it has no result."""
        result = self.query(expr)
        assert result["status"] == "success", (expr, result)
        data = result["data"]["result"]
        return float(data[0]["value"][1]) if data else 0.0


@pytest.fixture(
    scope="module",
    params=["mock", pytest.param("docker", marks=pytest.mark.docker)],
)
def executor_kind(request: pytest.FixtureRequest) -> str:
    """Which executor runs the jobs: the mock, and Docker where a daemon answers."""
    kind = str(request.param)
    if kind == "docker":
        require(docker_available(), "docker")
    return kind


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-metrics")


@pytest.fixture(scope="module")
def daemon(workdir: Path, executor_kind: str) -> Iterator[Daemon]:
    """``process_jobs`` on a fresh SQLite file with a seeded host and jobs, metrics on a free port."""
    require(binary_available("prometheus"), "prometheus")
    home = workdir / f"home-{executor_kind}"
    home.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "container_manager.settings",
        "CONTAINER_MANAGER_HOME": str(home),
        "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
        "CONTAINER_MANAGER_INSTANCE": f"e2e-{uuid4().hex[:8]}",
        "PYTHONPATH": str(REPO),
    }
    image = "busybox:latest"
    if executor_kind == "docker":
        from tests.support.images import ensure_busybox_image

        image = ensure_busybox_image()
    subprocess.run([*cli(), "migrate", "--noinput"], env=env, cwd=REPO, check=True, capture_output=True)
    seeded = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.prometheus.workload",
            "--executor",
            executor_kind,
            "--image",
            image,
        ],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert json.loads(seeded.stdout)["jobs"]
    port = free_port()
    log = workdir / f"daemon-{executor_kind}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *cli(),
                "process_jobs",
                "--metrics-port",
                str(port),
                "--workers",
                "4",
                "--resync-interval",
                "2",
                "--poll-interval",
                "0.2",
            ],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started = Daemon(f"http://127.0.0.1:{port}", port, log, executor_kind, proc)
    try:
        wait_for(lambda: http_get(started.url + "/readyz")[0] == 200, 30, "the daemon's /readyz", log)
        yield started
    finally:
        stop_process(proc)
        if executor_kind == "docker":
            _remove_containers(env["CONTAINER_MANAGER_INSTANCE"])


def _remove_containers(instance: str) -> None:
    """Leave no container of this test behind, even when the daemon was killed."""
    try:
        import docker

        from executors.types import LABEL_INSTANCE

        client = docker.from_env(timeout=10)
        try:
            for container in client.containers.list(
                all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
            ):
                container.remove(force=True)
        finally:
            client.close()
    except Exception:
        pass


@pytest.fixture(scope="module")
def prometheus(workdir: Path, daemon: Daemon) -> Iterator[Prometheus]:
    """Prometheus with the shipped scrape config and rules, retargeted at the daemon, 1 s interval."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str((DEPLOY / "prometheus" / rules).resolve()) for rules in config["rule_files"]]
    (job,) = (c for c in config["scrape_configs"] if c["job_name"] == SCRAPE_JOB)
    job["scrape_timeout"] = "1s"
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{daemon.port}"]
    path = workdir / f"prometheus-{daemon.executor}.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / f"prometheus-{daemon.executor}.log"
    storage = workdir / f"tsdb-{daemon.executor}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={path}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", path, log, proc)
    try:
        wait_for(lambda: http_get(server.url + "/-/ready")[0] == 200, 30, "Prometheus to be ready", log)
        yield server
    finally:
        stop_process(proc)
