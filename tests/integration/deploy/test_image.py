"""The container image, run the way deploy/README.md tells its users to run it.

The image is built once per session by ``scripts/build-image`` (on a Debian base made here
with debootstrap, since no registry is reachable). Every daemon container runs with the
README's flags: ``--network host`` (PostgreSQL listens on the host's loopback only), a
read-only root file system, all capabilities dropped, ``no-new-privileges``, an init process,
the image's unprivileged user, and the Docker socket mounted with its group added. Jobs are
submitted and read back from the host with ``container-manager manage_jobs``.
"""

from __future__ import annotations

import json
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from executors.types import LABEL_INSTANCE
from tests.components import free_port
from tests.integration.deploy.support import (
    ROOT,
    TERMINAL,
    TEST_LABEL,
    Site,
    children,
    container_logs,
    docker,
    inspect,
    poll,
    proc_status,
    remove_test_containers,
    socket_gid,
)
from tests.integration.ha.support import create_events

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.slow]

#: MB the Dockerfile may add to its base (the virtualenv and the user): deploy/README.md.
ADDED_LAYERS_BUDGET_MB = 115
#: docker stop's grace period in the README (--stop-timeout) and compose (stop_grace_period).
GRACE_SECONDS = 90
SECRET = "deploy-test-secret-key"


def _daemon_flags(site: Site) -> list[str]:
    return [
        "--network", "host", "--init", "--read-only", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-e", f"DATABASE_URL={site.database_url}", "-e", f"DJANGO_SECRET_KEY={SECRET}",
        "-e", f"CONTAINER_MANAGER_INSTANCE={site.instance}",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", "--group-add", str(socket_gid()),
    ]  # fmt: skip


def _migrate(image: str, site: Site) -> None:
    """``migrate`` in the image, read-only, as its user, against PostgreSQL on the host's loopback."""
    docker(
        "run", "--rm", "--label", TEST_LABEL, "--network", "host", "--read-only", "--cap-drop", "ALL",
        "-e", f"DATABASE_URL={site.database_url}", "-e", f"DJANGO_SECRET_KEY={SECRET}",
        image, "migrate", "--noinput", "-v", "0",
        timeout=300,
    )  # fmt: skip
    assert json.loads(site.cli("manage_jobs", "list", "--json")) == [], "the host sees the migrated schema"


@pytest.fixture
def migrated(image: str, site: Site) -> Site:
    """The site's database migrated by the image, with the local Docker daemon as executor host."""
    _migrate(image, site)
    site.add_docker_host("docker-local")  # at most 4 jobs at once
    return site


@dataclass
class DaemonContainer:
    name: str
    port: int

    def logs(self) -> str:
        return container_logs(self.name)

    def state(self, field: str) -> str:
        return inspect(self.name, "{{.State." + field + "}}")

    def exited(self, timeout: float = 30) -> bool:
        return bool(poll(lambda: self.state("Running") == "false", timeout))

    def process(self) -> dict[str, str]:
        """``/proc/PID/status`` of the daemon: the only child of the container's init."""
        (pid,) = children(int(self.state("Pid")))
        return proc_status(pid)


@pytest.fixture
def start_daemon(image: str, site: Site) -> Iterator[Callable[[], DaemonContainer]]:
    started: list[str] = []

    def start() -> DaemonContainer:
        name, port = f"cm-deploy-daemon-{uuid.uuid4().hex[:10]}", free_port()
        started.append(name)
        docker(
            "run", "-d", "--name", name, "--label", TEST_LABEL, *_daemon_flags(site),
            # Port 9464 of the shared host may be taken: the README's way to move it.
            "-e", f"CONTAINER_MANAGER_HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz",
            # The image's own check command, probed every second instead of every 30 s.
            "--health-interval", "1s",
            image,
            "process_jobs", "--metrics-port", str(port), "--lease-seconds", "3", "--log-format", "json",
        )  # fmt: skip
        return DaemonContainer(name, port)

    try:
        yield start
    finally:
        remove_test_containers(started)


def _wait(
    site: Site, ids: list[int], statuses: tuple[str, ...], timeout: float, *daemons: DaemonContainer
) -> None:
    if not site.wait_status(ids, statuses, timeout):
        logs = "\n".join(f"==== {d.name}\n{d.logs()[-5000:]}" for d in daemons)
        pytest.fail(f"jobs {ids}: {site.statuses(ids)}, wanted {statuses}\n{logs}", pytrace=False)


def _ran_once(site: Site, job_id: int) -> dict[str, Any]:
    """The job completed on its first and only attempt, and its output was captured."""
    job = site.show(job_id)
    assert job["status"] == "completed" and job["attempts"] == 1, job
    assert [a["attempt"] for a in job["attempts_detail"]] == [1], job
    assert site.logs(job_id) == "done\n"
    return job


def test_version_and_help(image: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert docker("run", "--rm", "--network", "none", image, "--version").startswith(
        f"container-manager {version} (Django "
    )
    usage = docker("run", "--rm", "--network", "none", image, "manage_jobs", "--help")
    assert usage.startswith("usage: container-manager manage_jobs")
    assert all(action in usage for action in ("submit", "list", "show", "cancel"))
    assert inspect(image, "{{.Config.User}}") == "10001:10001"
    assert docker("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u") == "10001"


#: Run inside the image: what of the build might have been left behind (the base's own files
#: are the base's business: only what the Dockerfile adds is searched).
_LEFTOVERS = r"""
import importlib.util, json, os, shutil
found = {"compilers": [c for c in ("cc", "gcc", "c++", "g++", "clang", "make", "x86_64-linux-gnu-gcc")
                       if shutil.which(c)],
         "modules": [m for m in ("pip", "setuptools", "wheel") if importlib.util.find_spec(m)],
         "files": []}
found["files"] += [p for p in ("/build", "/wheels") if os.path.exists(p)]
for top in ("/opt", "/root", "/tmp", "/var/lib/container-manager"):
    for path, dirs, files in os.walk(top):
        for name in dirs + files:
            if name in (".cache", "pip-cache", "wheels") or name.endswith((".whl", ".po")):
                found["files"].append(os.path.join(path, name))
print(json.dumps(found))
"""


def test_nothing_of_the_build_is_left_and_the_image_keeps_its_size_budget(image: str) -> None:
    as_root = ["run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "python3"]
    leftovers = json.loads(docker(*as_root, image, "-c", _LEFTOVERS))
    assert leftovers == {"compilers": [], "modules": [], "files": []}
    base = inspect(image, '{{index .Config.Labels "org.opencontainers.image.base.name"}}')
    size, base_size = (int(inspect(name, "{{.Size}}")) for name in (image, base))
    added = (size - base_size) / 1e6
    print(f"image {size / 1e6:.1f} MB = base {base} {base_size / 1e6:.1f} MB + {added:.1f} MB")  # pytest -rP
    assert added <= ADDED_LAYERS_BUDGET_MB, f"the image adds {added:.1f} MB to its base"


def test_migrate_then_the_daemon_runs_a_job_from_the_host_and_turns_healthy(
    migrated: Site, busybox: str, start_daemon: Callable[[], DaemonContainer]
) -> None:
    daemon = start_daemon()

    (job_id,) = migrated.submit(busybox, "sh -c 'sleep 1; echo done'", "docker-local")
    _wait(migrated, [job_id], TERMINAL, 60, daemon)
    job = _ran_once(migrated, job_id)
    assert all(step["actor"].startswith("daemon:") for step in job["history"]), job["history"]

    assert poll(lambda: daemon.state("Health.Status") == "healthy", timeout=30), daemon.logs()[-3000:]
    assert "CONTAINER_MANAGER_HEALTHCHECK_URL" in inspect(daemon.name, "{{json .Config.Healthcheck.Test}}")
    # The hardening really applies to the process that ran the job.
    assert inspect(daemon.name, "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.NetworkMode}}") == "true host"
    status = daemon.process()
    assert status["Uid"].split() == ["10001"] * 4 and str(socket_gid()) in status["Groups"].split()
    assert status["CapEff"] == "0000000000000000" and status["NoNewPrivs"] == "1"


def test_docker_stop_drains_and_exits_0_within_the_grace_period(
    migrated: Site, busybox: str, start_daemon: Callable[[], DaemonContainer]
) -> None:
    first = start_daemon()
    (job_id,) = migrated.submit(busybox, "sh -c 'sleep 6; echo done'", "docker-local")
    _wait(migrated, [job_id], ("running",), 30, first)

    started = time.monotonic()
    docker("stop", "--time", str(GRACE_SECONDS), first.name, timeout=GRACE_SECONDS + 30)
    elapsed = time.monotonic() - started
    # Exit status 0, not 137: the daemon left on its own before the grace period ran out.
    assert first.state("ExitCode") == "0" and elapsed < GRACE_SECONDS, (elapsed, first.logs()[-3000:])
    assert '"daemon stopped"' in first.logs()
    # Draining never stops the jobs: the container still runs, and the next daemon finishes it.
    assert migrated.statuses([job_id]) == ["running"]
    running = docker(
        "ps", "--filter", f"label={LABEL_INSTANCE}={migrated.instance}", "--format", "{{.Names}}"
    )
    assert running.split() == [f"cm-{migrated.instance}-{job_id}-1"]

    second = start_daemon()
    _wait(migrated, [job_id], TERMINAL, 60, second)
    _ran_once(migrated, job_id)


def test_docker_kill_mid_job_then_a_new_container_loses_nothing(
    migrated: Site, busybox: str, start_daemon: Callable[[], DaemonContainer]
) -> None:
    with create_events(migrated.instance) as events:
        first = start_daemon()
        ids = migrated.submit(busybox, "sh -c 'sleep 3; echo done'", "docker-local", count=6)
        assert migrated.wait_any_running(ids, at_least=2, timeout=30), first.logs()[-3000:]
        docker("kill", first.name)
        assert first.exited() and first.state("ExitCode") == "137"

        second = start_daemon()
        _wait(migrated, ids, TERMINAL, 120, first, second)
        names = [_ran_once(migrated, job_id)["attempts_detail"][0]["container"] for job_id in ids]
        assert poll(lambda: all(events.names[n] >= 1 for n in names), timeout=10)
    assert sorted(events.names.elements()) == sorted(names), "one container created per attempt, ever"
    leftover = lambda: docker(  # noqa: E731
        "ps", "-a", "--filter", f"label={LABEL_INSTANCE}={migrated.instance}", "--format", "{{.Names}}"
    )
    assert poll(lambda: leftover() == "", timeout=30), leftover()
