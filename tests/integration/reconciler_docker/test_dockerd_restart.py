"""``dockerd`` restarted while a job runs: the attempt is recorded sensibly, retried, nothing is left.

Restarting the machine's shared Docker daemon would break every other test (and every other
user) on the machine, so this test starts a *private* ``dockerd`` of its own: its own socket,
data root, exec root (and so its own containerd), cgroup parent and bridge interface, with
iptables, masquerading and IP forwarding left alone, and jobs on ``network: none``. It then
stops and restarts exactly that process (by its pid). Without live-restore, a stopping
``dockerd`` stops its containers (SIGTERM, then SIGKILL after their stop timeout), so the
running attempt ends with the job's own exit code (or, had the container vanished, ``lost``)
and the job's retry runs on the restarted daemon.

The bridge is created by the test on purpose: ``dockerd --bridge=none`` deletes the host's
``docker0`` interface on start-up, which would break the shared daemon's networking.

Needs root and the ``dockerd`` binary: skipped on a laptop without them, failed in CI.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import docker
import pytest

from container_manager.models import ContainerJob, ExecutorHost
from executors.docker import DockerExecutor
from tests.components import binary_available, require
from tests.integration.reconciler_docker.support import (
    containers_of,
    make_job,
    running_daemon,
    wait_until,
)
from tests.support.images import ensure_busybox_image

pytestmark = pytest.mark.docker


def _taken_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True)
    nets = []
    for line in out.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    taken = _taken_networks()
    for third in range(200, 256):
        candidate = ipaddress.ip_network(f"10.254.{third}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise AssertionError("no free 10.254.x.0/24 subnet for the private bridge")


@dataclass
class PrivateDockerd:
    """A ``dockerd`` process this test started, and everything it owns."""

    root: Path
    bridge: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "dockerd",
                    f"--host={self.base_url}",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--pidfile={self.root / 'dockerd.pid'}",
                    f"--bridge={self.bridge}",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--ip-forward=false",
                    "--cgroup-parent=/cm-test-private-dockerd",
                    "--shutdown-timeout=1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self.answers, 60, f"the private dockerd to answer (log: {self.log})", interval=0.2)

    def answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"the private dockerd exited:\n{self.log.read_text(errors='replace')[-3000:]}"
            )
        try:
            api = docker.APIClient(base_url=self.base_url, timeout=2)
        except docker.errors.DockerException:
            return False
        try:
            return bool(api.ping())
        except Exception:
            return False
        finally:
            api.close()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM our dockerd (it stops its containers first), SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def private_dockerd() -> Iterator[PrivateDockerd]:
    require(os.geteuid() == 0 and binary_available("dockerd") and binary_available("ip"), "root and dockerd")
    root = Path(tempfile.mkdtemp(prefix="cm-dockerd-", dir="/tmp"))  # short: socket paths are limited
    bridge = f"cmt{uuid4().hex[:8]}"
    subnet = _free_subnet()
    gateway = f"{next(subnet.hosts())}/{subnet.prefixlen}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    daemon = PrivateDockerd(root=root, bridge=bridge, log=root / "dockerd.log")
    try:
        subprocess.run(["ip", "addr", "add", gateway, "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        daemon.start()
        yield daemon
    finally:
        try:
            daemon.stop()
        finally:
            subprocess.run(["ip", "link", "del", bridge], check=False)
            shutil.rmtree(root, ignore_errors=True)


def test_dockerd_restarted_during_a_run(
    transactional_db: Any, instance: str, private_dockerd: PrivateDockerd, cleanup_instances: Any
) -> None:
    cleanup_instances(instance, private_dockerd.base_url)
    ensure_busybox_image(private_dockerd.base_url)
    host = ExecutorHost.objects.create(
        name=f"private-{instance}",
        executor_type="docker",
        connection_string=private_dockerd.base_url,
        executor_config={"network": "none"},
        max_concurrent_jobs=4,
    )
    # Runs until a wall-clock second a few seconds away, and exits on SIGTERM like a well-behaved
    # program: the first attempt is stopped by the restart, the retry runs to the end.
    until = int(time.time()) + 6
    job = make_job(
        host,
        f'sh -c \'trap "echo stopped; exit 143" TERM; echo attempt started; '
        f"while [ $(date +%s) -lt {until} ]; do sleep 0.2; done; echo finished'",
        max_retries=2,
        retry_backoff_seconds=0.5,
        retry_backoff_max_seconds=1.0,
    )
    executor = host.get_executor()
    assert isinstance(executor, DockerExecutor)
    with running_daemon(workers=2):

        def running() -> bool:
            job.refresh_from_db()
            return job.status == "running"

        wait_until(running, 30, "the job to run on the private dockerd")
        private_dockerd.restart()
        wait_until(
            lambda: ContainerJob.objects.filter(pk=job.pk).terminal().exists(),
            90,
            "the job to finish after the dockerd restart",
        )
    job.refresh_from_db()
    first, *rest = job.executions.order_by("attempt")
    assert first.status == "failed" and first.reason in ("exit_code", "lost"), (first.reason, first.message)
    if first.reason == "exit_code":
        assert first.exit_code == 143  # stopped (SIGTERM) by the stopping daemon
        assert first.stdout == "attempt started\nstopped\n"  # the logs survived the restart
    assert (job.status, job.attempts) == ("completed", 2), (job.status, job.status_message)
    assert [(e.status, e.stdout) for e in rest] == [("completed", "attempt started\nfinished\n")]
    assert executor.counters()["events"].retries >= 1  # the event stream broke with dockerd and came back
    assert containers_of(instance, private_dockerd.base_url) == []
