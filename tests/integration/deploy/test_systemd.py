"""The systemd unit under a real systemd: PID 1 of an unprivileged container.

The container is a minimal Debian with systemd (``scripts/debian-base --include
systemd,systemd-sysv,dbus``), run with ``--tmpfs /run --tmpfs /run/lock -v
/sys/fs/cgroup:/sys/fs/cgroup:ro --network host`` (PostgreSQL on the host's loopback) and the
Docker socket mounted; Docker's package would have made a ``docker`` group owning the socket,
so the test makes one with the socket's gid. This checkout is mounted read-only as the
user's checkout, with the wheels ``scripts/build-image`` left in it.

The install is deploy/README.md's own: the first shell block of its systemd section runs as it
is, as root, in the checkout; after the line that says "then edit it" the test writes its
values into the environment file. One container and one installation serve every test here,
in order: each test leaves the service running.

An unprivileged container cannot make namespaces, so systemd skips the mount and host-name
sandboxing there (it logs "namespace setup is prohibited ... ignoring"); everything else of the
unit applies and is checked on the running process.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.components import free_port
from tests.integration.deploy.support import (
    ROOT,
    TERMINAL,
    TEST_LABEL,
    Site,
    docker,
    poll,
    proc_status,
    remove_test_containers,
    socket_gid,
)

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.slow]

UNIT = "container-manager"
CHECKOUT = "/srv/checkout"
ENV_FILE = "/etc/container-manager/container-manager.env"
EDIT_MARKER = "# then edit it"
DONE = "sh -c 'sleep 1; echo done'"


def readme_install_block() -> str:
    """The first ``sh`` block of deploy/README.md's systemd section."""
    text = (ROOT / "deploy" / "README.md").read_text()
    section = text.split("\n## systemd\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "deploy/README.md: no sh block in the systemd section"
    return match.group(1)


@dataclass
class Machine:
    """The systemd container."""

    name: str

    def sh(self, script: str, timeout: float = 120, check: bool = True) -> str:
        return docker("exec", "-w", CHECKOUT, self.name, "bash", "-euo", "pipefail", "-c", script,
                      timeout=timeout, check=check)  # fmt: skip

    def systemctl(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return docker("exec", self.name, "systemctl", *args, timeout=timeout, check=check)

    def show(self) -> dict[str, str]:
        out = self.systemctl("show", UNIT, "--no-pager")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, name: str) -> str:
        return self.systemctl("show", UNIT, "-p", name, "--value")

    def journal(self) -> str:
        return docker("exec", self.name, "journalctl", "-u", UNIT, "--no-pager", "-o", "cat", timeout=60)

    def status(self) -> str:
        # systemctl status exits 3 when the unit is not active: the output is what matters.
        return self.systemctl("status", UNIT, "--no-pager", "--full", "--lines", "0", check=False)

    def process(self, pid: str) -> dict[str, str]:
        return proc_status(pid, read=lambda path: docker("exec", self.name, "cat", path))

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        if not poll(predicate, timeout):
            pytest.fail(
                f"{what} within {timeout} s\n{self.show_brief()}\n{self.journal()[-5000:]}", pytrace=False
            )

    def show_brief(self) -> str:
        props = self.show()
        keys = ("ActiveState", "SubState", "Result", "MainPID", "NRestarts", "StatusText", "ExecMainStatus")
        return " ".join(f"{k}={props.get(k)}" for k in keys)


@pytest.fixture(scope="module")
def machine(systemd_base: str, wheels: Path) -> Iterator[Machine]:
    name = f"cm-deploy-systemd-{uuid.uuid4().hex[:10]}"
    try:
        docker(
            "run", "-d", "--name", name, "--label", TEST_LABEL,
            "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "--network", "host", "-v", "/var/run/docker.sock:/var/run/docker.sock",
            "-v", f"{ROOT}:{CHECKOUT}:ro",
            systemd_base, "/lib/systemd/systemd",
        )  # fmt: skip
        made = Machine(name)
        state = lambda: made.systemctl("is-system-running", check=False)  # noqa: E731
        assert poll(lambda: state() in ("running", "degraded"), timeout=60), state()
        # What Docker's package does on a host: a docker group that owns the socket.
        made.sh(f"groupadd --gid {socket_gid()} docker")
        yield made
    finally:
        remove_test_containers([name])


@pytest.fixture(scope="module")
def service(machine: Machine, module_site: Site) -> Machine:
    """The unit installed and started exactly as deploy/README.md says."""
    block = readme_install_block()
    marker = block.index(EDIT_MARKER)
    install, start = block[: block.index("\n", marker) + 1], block[block.index("\n", marker) + 1 :]
    machine.sh(install, timeout=600)
    example = machine.sh(f"cat {ENV_FILE}")
    values = {
        "DATABASE_URL": module_site.database_url,
        "DJANGO_SECRET_KEY": "systemd-test-secret",
        "CONTAINER_MANAGER_INSTANCE": module_site.instance,
    }
    edited = example
    for key, value in values.items():
        edited, count = re.subn(rf"^{key}=.*$", f"{key}={value}", edited, flags=re.M)
        assert count == 1, f"{key} is not in the example environment file"
    edited, count = re.subn(r"--metrics-port \d+", f"--metrics-port {free_port()}", edited)
    assert count == 1, "PROCESS_JOBS_ARGS names the metrics port"
    docker("exec", "-i", machine.name, "sh", "-c", f"cat > {ENV_FILE}", stdin=edited)
    machine.sh(start, timeout=300)
    assert machine.systemctl("is-active", UNIT, check=False) == "active", machine.journal()[-5000:]
    assert machine.systemctl("is-enabled", UNIT) == "enabled"
    # "Then add an executor host": the local Docker daemon, through the mounted socket.
    module_site.add_docker_host("docker-local")
    return machine


def _main_pid(service: Machine) -> str:
    pid = service.prop("MainPID")
    assert pid != "0", service.show_brief()
    return pid


def _submit(site: Site, image: str, command: str = DONE) -> int:
    (job_id,) = site.submit(image, command, "docker-local")
    return job_id


def _seconds(span: str) -> float:
    """A systemd time span as ``systemctl show`` prints it ("1min 30s", "30s", "500ms")."""
    units = {"h": 3600.0, "min": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|ms|s)\b", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def _finish(site: Site, service: Machine, job_id: int, timeout: float = 60) -> None:
    if not site.wait_status([job_id], TERMINAL, timeout):
        pytest.fail(f"job {job_id}: {site.statuses([job_id])}\n{service.journal()[-5000:]}", pytrace=False)
    job = site.show(job_id)
    assert job["status"] == "completed" and [a["attempt"] for a in job["attempts_detail"]] == [1], job
    assert site.logs(job_id) == "done\n"


def test_active_only_after_ready_with_its_status_lines(service: Machine, module_site: Site) -> None:
    # The only active executor host does not answer: the daemon waits for one before READY=1.
    service.systemctl("stop", UNIT)
    module_site.set_host_active("docker-local", False)
    module_site.add_docker_host("docker-unreachable", "unix:///run/no-docker-here.sock")
    service.systemctl("start", "--no-block", UNIT)
    service.wait(
        "waiting for a host", lambda: "waiting for an executor host" in service.prop("StatusText"), 60
    )
    for _ in range(3):  # and it stays so
        assert (service.prop("ActiveState"), service.prop("SubState")) == ("activating", "start")
        time.sleep(1)
    assert (
        'Status: "starting: waiting for an executor host (docker-unreachable unreachable)"'
        in service.status()
    )

    answered = time.monotonic_ns() // 1000  # CLOCK_MONOTONIC is the host's in the container too
    module_site.set_host_active("docker-local", True)
    service.wait("active", lambda: service.prop("ActiveState") == "active", 30)
    assert int(service.prop("ActiveEnterTimestampMonotonic")) > answered, "active only after READY=1"
    assert re.search(r'Status: "leader \(lease .reconciler., epoch \d+\)', service.status()), service.status()
    module_site.set_host_active("docker-unreachable", False)


def test_a_job_runs_to_completion_under_the_units_hardening(
    service: Machine, module_site: Site, busybox: str
) -> None:
    job_id = _submit(module_site, busybox)
    _finish(module_site, service, job_id)

    status = service.process(_main_pid(service))
    uid = service.sh("id -u container-manager")
    assert status["Uid"].split() == [uid] * 4
    assert str(socket_gid()) in status["Groups"].split(), "SupplementaryGroups=docker"
    assert status["CapEff"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"


def test_the_watchdog_keeps_it_alive_and_restarts_a_hung_loop(service: Machine) -> None:
    watchdog = _seconds(service.prop("WatchdogUSec"))
    pid, restarts = _main_pid(service), int(service.prop("NRestarts"))
    pinged = service.prop("WatchdogTimestampMonotonic")
    service.wait("a WATCHDOG=1 ping", lambda: service.prop("WatchdogTimestampMonotonic") != pinged, watchdog)
    started = int(service.prop("ExecMainStartTimestampMonotonic")) / 1e6
    time.sleep(max(0.0, started + watchdog + 2 - time.monotonic()))
    assert (_main_pid(service), int(service.prop("NRestarts"))) == (pid, restarts), "alive past WatchdogSec"

    service.sh(f"kill -STOP {pid}")
    service.wait(
        "a restart after the watchdog timeout",
        lambda: int(service.prop("NRestarts")) == restarts + 1 and service.prop("ActiveState") == "active",
        watchdog + 30,
    )
    assert _main_pid(service) != pid
    assert f"Killing process {pid} (container-manag) with signal SIGABRT" in service.journal()
    assert "Watchdog timeout" in service.journal()


def test_systemctl_stop_drains_and_exits_cleanly(service: Machine, module_site: Site, busybox: str) -> None:
    job_id = _submit(module_site, busybox, "sh -c 'sleep 6; echo done'")
    assert module_site.wait_status([job_id], ("running",), 30), service.journal()[-3000:]
    timeout_stop = _seconds(service.prop("TimeoutStopUSec"))
    started = time.monotonic()
    service.systemctl("stop", UNIT, timeout=200)
    assert time.monotonic() - started < timeout_stop
    props = service.show()
    assert (props["ActiveState"], props["Result"], props["ExecMainCode"], props["ExecMainStatus"]) == (
        "inactive", "success", "1", "0"
    ), service.show_brief()  # fmt: skip
    assert '"daemon stopped"' in service.journal()
    # Its container runs on, and the next start finishes the job on the same attempt.
    assert module_site.statuses([job_id]) == ["running"]
    service.systemctl("start", UNIT)
    _finish(module_site, service, job_id)


def test_restart_brings_it_back_after_sigkill(service: Machine, module_site: Site, busybox: str) -> None:
    job_id = _submit(module_site, busybox, "sh -c 'sleep 4; echo done'")
    assert module_site.wait_status([job_id], ("running",), 30), service.journal()[-3000:]
    pid, restarts = _main_pid(service), int(service.prop("NRestarts"))
    service.sh(f"kill -KILL {pid}")
    service.wait(
        "a restart after SIGKILL",
        lambda: int(service.prop("NRestarts")) == restarts + 1 and service.prop("ActiveState") == "active",
        30,
    )
    assert _main_pid(service) != pid
    assert "code=killed, status=9/KILL" in service.journal()
    _finish(module_site, service, job_id)
