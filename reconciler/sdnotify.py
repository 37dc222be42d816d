"""A minimal client of systemd's notify protocol (``sd_notify(3)``), without a dependency.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for an
abstract socket) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). The
protocol is one datagram per message of newline-separated ``KEY=value`` lines: ``READY=1`` when
the service is up, ``STATUS=...`` free text for ``systemctl status``, ``WATCHDOG=1`` keep-alives
at least every ``WATCHDOG_USEC / 2``, ``STOPPING=1`` when shutting down. Outside systemd (no
``NOTIFY_SOCKET``) every call is a no-op, so the daemon calls it unconditionally.

A failed send is logged and ignored: a notify problem must never take the daemon down.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("reconciler.sdnotify")


def socket_address(value: str | None) -> str | bytes | None:
    """The ``AF_UNIX`` address named by ``NOTIFY_SOCKET``: ``@name`` means an abstract socket."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: and relative paths are not supported (systemd never passes the latter)


def watchdog_seconds(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd asked for, in seconds, or None when there is none for us.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for: a child that
    inherited the environment must not ping on its parent's behalf.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC", value=raw)
        return None
    return usec / 1_000_000 if usec > 0 else None


class Notifier:
    """Sends notify messages to one socket; thread-safe; a no-op when ``address`` is None."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        #: systemd's watchdog timeout (s); pings go out every half of it.
        self.watchdog = watchdog if address is not None else None
        self._sock: socket.socket | None = None
        # Re-entrant: request_stop() sends STOPPING=1 from a signal handler, which may run while
        # the main thread is inside send().
        self._lock = threading.RLock()
        self._last_ping = float("-inf")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(socket_address(env.get("NOTIFY_SOCKET")), watchdog_seconds(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two pings (half the timeout, as systemd recommends)."""
        return self.watchdog / 2 if self.watchdog else None

    def send(self, *lines: str) -> bool:
        """Send one message made of ``lines``; True if it was sent."""
        if self.address is None or not lines:
            return False
        payload = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self.address)
            except OSError as exc:
                log.debug("sd_notify failed", error=str(exc), message=lines[0])
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def ping(self) -> bool:
        """``WATCHDOG=1`` now (the caller decides the loop is healthy)."""
        self._last_ping = time.monotonic()
        return self.send("WATCHDOG=1")

    def ping_due(self, slack: float = 0.0) -> bool:
        """True when a watchdog ping should go out (``slack``: how late the next check may come)."""
        interval = self.watchdog_interval
        if interval is None:
            return False
        return time.monotonic() - self._last_ping >= max(0.0, interval - slack)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
