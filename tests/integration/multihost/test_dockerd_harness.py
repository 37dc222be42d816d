"""The harness itself: a killed daemon restarts on its port and data root, and nothing is left behind.

Leftovers of a test run (namespaces, mounts, cgroups, shims, containers) would pile up on a
machine that other test sessions share, so the clean-up is tested like any other behaviour,
including the sweep that removes a crashed run's fleet and must spare a live one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dockerd import DockerdFleet, sweep_leftovers
from tests.support.images import DEFAULT_TAG

pytestmark = pytest.mark.docker


def traces(fleet: DockerdFleet) -> list[str]:
    """Everything of ``fleet`` still on the machine: directories, namespaces, mounts, cgroups, processes."""
    found = [str(fleet.root)] if fleet.root.exists() else []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {h.netns}" for h in fleet.hosts if h.netns in namespaces]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines() if str(fleet.root) in line]
    for host in fleet.hosts:
        name = host.cgroup_parent.strip("/")
        found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{name}")]
        found += [f"cgroup {name}"] if (Path("/sys/fs/cgroup") / name).exists() else []
    needle = str(fleet.root).encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(f"process {pid}")
        except OSError:
            continue
    return found


@pytest.fixture
def fleet(dockerd_fleet: DockerdFleet) -> Iterator[DockerdFleet]:
    """A one-host fleet of its own, with the test image (the session's fleet is left alone)."""
    own = DockerdFleet.start(1, image=DEFAULT_TAG)
    try:
        yield own
    finally:
        own.destroy()


def test_kill_and_restart_on_the_same_port_and_data_root(fleet: DockerdFleet) -> None:
    (host,) = fleet.hosts
    api = host.api()
    try:
        api.create_container(
            DEFAULT_TAG, ["sh", "-c", "trap 'exit 143' TERM; while true; do sleep 0.2; done"], name="held"
        )
        api.start("held")
        port, data = host.port, api.info()["DockerRootDir"]
        host.kill()
        assert not host.running and not host.answers()
        host.start()
        assert host.starts == 2 and host.port == port and api.info()["DockerRootDir"] == data
        # Without live-restore, the restarted daemon stopped what it found running.
        state = api.inspect_container("held")["State"]
        assert (state["Running"], state["ExitCode"]) == (False, 143)
        api.start("held")  # and the daemon runs containers again
        assert api.inspect_container("held")["State"]["Running"]
    finally:
        api.close()


def test_destroy_leaves_nothing_even_after_a_kill(fleet: DockerdFleet) -> None:
    (host,) = fleet.hosts
    api = host.api()
    try:
        api.create_container(DEFAULT_TAG, ["sleep", "600"], name="left-running")
        api.start("left-running")
    finally:
        api.close()
    host.kill()  # its shim and container keep running, its mounts stay
    assert traces(fleet)
    fleet.destroy()
    assert traces(fleet) == []


def test_the_sweep_removes_a_dead_runs_fleet_and_spares_a_live_one(fleet: DockerdFleet) -> None:
    dead = DockerdFleet.start(1)
    try:
        (dead.root / "owner").write_text("999999999 0\n")  # as if its test session had crashed
        swept = sweep_leftovers()
        assert str(dead.root) in swept and traces(dead) == []
        assert str(fleet.root) not in swept and fleet.hosts[0].answers()
    finally:
        dead.destroy()
