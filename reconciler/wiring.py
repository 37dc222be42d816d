"""A running daemon and everything around it, built in one place: logs, metrics, signals.

``serve()`` is what ``process_jobs`` runs (and what code embedding the daemon may run): it
configures the logs, checks the options against the database, builds the daemon, serves
``/metrics``, ``/healthz`` and ``/readyz``, turns SIGTERM and SIGINT into a graceful stop (a
second signal forces the exit), runs the daemon and returns its exit status. A problem the user
can fix (an unknown host, a port in use, a second replica on SQLite) is a ``ReconcilerError``
with a message, never a traceback.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from container_manager.logconfig import configure
from container_manager.models import ExecutorHost
from reconciler.daemon import Daemon, DaemonOptions
from reconciler.exceptions import ReconcilerError


def serve(
    options: DaemonOptions,
    *,
    log_format: str = "auto",
    log_level: str = "INFO",
    metrics_addr: str = "127.0.0.1",
    metrics_port: int = 9464,
) -> int:
    """Run the daemon with logs, metrics and signal handling until it stops; its exit status."""
    configure(log_format, log_level)
    known = set(ExecutorHost.objects.values_list("name", flat=True))
    unknown = sorted(set(options.host_names) - known)
    if unknown:
        raise ReconcilerError(f"--host: no executor host named {', '.join(unknown)}")
    daemon = Daemon(options)
    install_signal_handlers(daemon)
    server = None
    if metrics_port and not options.once:
        server = start_metrics(daemon, metrics_addr, metrics_port)
    try:
        return daemon.run()
    finally:
        if server is not None:
            server.stop()


def start_metrics(daemon: Daemon, addr: str, port: int) -> Any:
    """Serve the daemon's metrics and health endpoints; a port in use is a ``ReconcilerError``."""
    from metrics.server import MetricsServer

    try:
        server = MetricsServer(daemon, addr, port)
        server.start()
    except OSError as exc:
        raise ReconcilerError(f"--metrics-port: cannot listen on {addr}:{port}: {exc}") from None
    return server


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM/SIGINT ask for a graceful stop; a second one exits at once (128 + the signal)."""
    received = {"count": 0}

    def handler(signum: int, frame: Any) -> None:
        received["count"] += 1
        if received["count"] > 1:
            os._exit(128 + signum)
        daemon.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (tests calling call_command from a thread)
            pass
