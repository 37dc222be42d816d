"""The systemd notify protocol: the client against real datagram sockets, the daemon's use of it
(READY, STATUS, WATCHDOG only while the loop is alive, STOPPING), and a real ``process_jobs``
subprocess talking to a socket the test listens on, the way systemd would.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.sdnotify import Notifier, socket_address, watchdog_seconds

ROOT = Path(__file__).resolve().parents[2]


class Listener:
    """What systemd does: a datagram socket that collects (time, message) pairs."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float, until: str | None = None) -> list[tuple[float, str]]:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            self.messages.append((time.monotonic(), data.decode()))
            if until is not None and until in data.decode():
                break
        return self.messages

    def lines(self) -> list[str]:
        return [line for _, message in self.messages for line in message.split("\n")]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def abstract() -> Iterator[tuple[str, Listener]]:
    name = f"@cm-test-{uuid.uuid4().hex}"
    listener = Listener(b"\0" + name[1:].encode())
    yield name, listener
    listener.close()


def test_socket_addresses() -> None:
    assert socket_address("@name") == b"\0name"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("") is None and socket_address(None) is None
    assert socket_address("relative/path") is None


def test_watchdog_settings() -> None:
    assert watchdog_seconds({}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}) == 0.5
    assert watchdog_seconds({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, pid=2) is None, (
        "for another process"
    )
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog is None and not notifier.ping_due()
    assert notifier.ready("up") is False and notifier.ping() is False and notifier.stopping() is False


def test_messages_reach_a_filesystem_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    listener = Listener(path)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
        assert notifier.ready("leader")
        assert notifier.status("queue 3")
        assert notifier.stopping()
        listener.collect(1.0, until="STOPPING=1")
        assert [m for _, m in listener.messages] == ["READY=1\nSTATUS=leader", "STATUS=queue 3", "STOPPING=1"]
    finally:
        listener.close()


def test_messages_reach_an_abstract_socket(abstract: tuple[str, Listener]) -> None:
    name, listener = abstract
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_interval == 1.0
    assert notifier.ping_due()
    assert notifier.ping()
    assert not notifier.ping_due(), "just pinged"
    assert notifier.ping_due(slack=1.0)
    listener.collect(1.0, until="WATCHDOG=1")
    assert listener.lines() == ["WATCHDOG=1"]


def test_a_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.send("READY=1") is False


def test_the_daemon_withholds_the_watchdog_when_its_loop_stalls(abstract: tuple[str, Listener]) -> None:
    from reconciler.daemon import Daemon, DaemonOptions

    name, listener = abstract
    daemon = Daemon(DaemonOptions(resync_seconds=1.0))
    daemon.notifier = Notifier.from_environ({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000"})
    daemon.last_pass = time.monotonic()
    daemon._feed_watchdog()
    listener.collect(0.5, until="WATCHDOG=1")
    assert listener.lines() == ["WATCHDOG=1"]

    daemon.last_pass = time.monotonic() - 10 * daemon.stale_after  # a hung loop
    time.sleep(0.15)
    daemon._feed_watchdog()
    listener.messages.clear()
    listener.collect(0.3)
    assert listener.lines() == [], "no ping: systemd restarts a hung loop"

    daemon.request_stop()
    listener.collect(1.0, until="STOPPING=1")
    assert "STOPPING=1" in listener.lines()


def test_process_jobs_speaks_the_protocol(tmp_path: Path, abstract: tuple[str, Listener]) -> None:
    """READY once started, STATUS lines, WATCHDOG at half the configured timeout, STOPPING on SIGTERM."""
    name, listener = abstract
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CONTAINER_MANAGER_HOME=str(tmp_path),
        PYTHONUNBUFFERED="1",
        NOTIFY_SOCKET=name,
        WATCHDOG_USEC="1000000",
    )
    migrate = subprocess.run(
        [sys.executable, "-m", "container_manager.cli", "migrate", "-v0"],
        env={k: v for k, v in env.items() if k != "NOTIFY_SOCKET"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "container_manager.cli", "process_jobs", "--metrics-port", "0"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        listener.collect(30, until="READY=1")
        ready_at = listener.messages[-1][0]
        assert "READY=1" in listener.lines(), listener.lines()
        ready = listener.messages[-1][1].split("\n")
        assert ready[0] == "READY=1" and ready[1].startswith("STATUS=leader"), ready
        listener.collect(3.0)
        pings = [t for t, message in listener.messages if t >= ready_at and "WATCHDOG=1" in message]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # WatchdogSec=1 s: a ping every ~0.5 s, never a gap near the timeout.
        assert 4 <= len(pings) <= 8, pings
        assert max(gaps) < 0.8, gaps
        proc.send_signal(signal.SIGTERM)
        listener.collect(10, until="STOPPING=1")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = listener.lines()
    assert "STOPPING=1" in lines, lines
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    assert any(line.startswith("STATUS=stopping") for line in lines)
    assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
