"""The daemon's small HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

It runs inside ``process_jobs`` (a stdlib threading HTTP server in a daemon thread) because
the numbers and the liveness it reports live in that process: the work queue, the time of
the last loop pass, the leader flag. It binds to loopback unless told otherwise.

* ``/metrics``: the Prometheus text format of ``metrics.definitions.REGISTRY``, plus the
  scrape-time database collector (``metrics.collector``).
* ``/healthz``: is the loop alive? 200 while the last pass is younger than a threshold
  (default three resync intervals), else 503. For a supervisor's liveness probe: restart on 503.
* ``/readyz``: can the daemon do its job? 200 when the database answers and at least one
  active executor host is healthy (its recorded health check, or a live probe), and the
  daemon has started and is not stopping; else 503. The body says whether this replica is
  the ``leader`` or a ``standby``.

Handler threads are short-lived, so every request that touched the database closes its
connections before the thread ends.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import structlog
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.registry import CollectorRegistry

from metrics import collector, executor_calls
from metrics import definitions as m

log = structlog.get_logger("metrics.server")

#: /healthz fails after this many resync intervals without a loop pass.
STALE_AFTER_RESYNCS = 3.0
#: seconds a live executor probe may take inside /readyz.
PROBE_TIMEOUT = 2.0
#: at most this many hosts are probed live by one /readyz request.
MAX_PROBES = 3
#: ``ExecutorHost.health_status`` of a host whose last check passed.
HEALTHY = "healthy"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: MetricsServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "container-manager"
    #: a stalled client must not hold a thread forever.
    timeout = 10

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, *, head: bool) -> None:
        app = self.server.app
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if path == "/metrics":
                status, content_type, body = app.render_metrics()
            elif path == "/healthz":
                status, content_type, body = _json(*app.health())
            elif path == "/readyz":
                status, content_type, body = _json(*app.readiness())
            elif path == "/":
                status, content_type = HTTPStatus.OK, "text/plain; charset=utf-8"
                body = b"container-manager daemon: /metrics /healthz /readyz\n"
            else:
                status, content_type, body = HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n"
        except Exception as exc:
            log.exception("metrics endpoint failed", path=path)
            status, content_type = HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8"
            body = f"internal error: {type(exc).__name__}\n".encode()
        finally:
            _close_db_connections()
        headers = {"Content-Type": content_type, "Cache-Control": "no-store"}
        if path == "/metrics" and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        headers["Content-Length"] = str(len(body))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", client=self.client_address[0], request=format % args)


def _json(status: HTTPStatus, payload: dict[str, Any]) -> tuple[HTTPStatus, str, bytes]:
    return status, "application/json", (json.dumps(payload, sort_keys=True) + "\n").encode()


def _close_db_connections() -> None:
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # closing is best effort; never let it turn a response into an error
        pass


class MetricsServer:
    """Serves the daemon's metrics and probes on ``addr:port`` from a background thread.

    ``port=0`` picks a free port (read it back from ``.port``); ``process_jobs`` treats
    ``--metrics-port 0`` as "off" and never constructs the server then.
    """

    def __init__(
        self,
        daemon: Any,
        addr: str = "127.0.0.1",
        port: int = 9464,
        *,
        registry: CollectorRegistry = m.REGISTRY,
        stale_after: float | None = None,
    ) -> None:
        self.daemon = daemon
        self.addr = addr
        self.requested_port = port
        self.registry = registry
        resync = float(getattr(daemon, "resync_seconds", None) or 30.0)
        #: /healthz fails when the last loop pass is older than this many seconds.
        self.stale_after = stale_after if stale_after is not None else STALE_AFTER_RESYNCS * resync
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (raises ``OSError`` if the address is taken) and serve in a daemon thread."""
        # ``_created`` series double the series count and Prometheus 2 stores them as gauges.
        disable_created_metrics()
        options = getattr(self.daemon, "options", None)
        collector.register(
            self.registry, host_names=getattr(options, "host_names", None) or None, enabled=self.is_leader
        )
        executor_calls.register(self.registry)
        self._httpd = _Server((self.addr, self.requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="cm-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics endpoint listening", url=self.url)

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    @property
    def port(self) -> int:
        if self._httpd is None:
            return self.requested_port
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}"

    # Endpoints ------------------------------------------------------------------------

    def render_metrics(self) -> tuple[HTTPStatus, str, bytes]:
        self._refresh_daemon_gauges()
        # Text format 0.0.4: what every Prometheus 2.x (Debian bookworm ships 2.42) parses.
        return HTTPStatus.OK, CONTENT_TYPE_PLAIN_0_0_4, generate_latest(self.registry)

    def _refresh_daemon_gauges(self) -> None:
        """Gauges whose truth is the daemon's state at this instant."""
        m.LEADER.set(1 if self.is_leader() else 0)
        resync = getattr(self.daemon, "resync_seconds", None)
        if resync:
            m.RESYNC_INTERVAL.set(float(resync))
        queue = getattr(self.daemon, "queue", None)
        if queue is not None:
            m.QUEUE_DEPTH.set(len(queue))
            m.QUEUE_DELAYED.set(getattr(queue, "delayed", 0))

    def is_leader(self) -> bool:
        return bool(getattr(self.daemon, "is_leader", lambda: True)())

    def last_pass_age(self) -> float:
        return max(0.0, time.monotonic() - float(self.daemon.last_pass))

    def health(self) -> tuple[HTTPStatus, dict[str, Any]]:
        age = self.last_pass_age()
        alive = age < self.stale_after
        payload = {
            "status": "ok" if alive else "stalled",
            "last_pass_age_seconds": round(age, 3),
            "threshold_seconds": self.stale_after,
        }
        return (HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE), payload

    def readiness(self) -> tuple[HTTPStatus, dict[str, Any]]:
        problems: list[str] = []
        ready_event = getattr(self.daemon, "ready", None)
        if ready_event is not None and not ready_event.is_set():
            problems.append("daemon not started yet")
        stop_event = getattr(self.daemon, "stop_event", None)
        if stop_event is not None and stop_event.is_set():
            problems.append("daemon stopping")
        database = self._check_database()
        hosts: dict[str, str] = {}
        if database != "ok":
            problems.append("database unreachable")
        else:
            hosts = self._check_hosts()
            if "healthy" not in hosts.values():
                problems.append("no healthy executor host")
        scope = getattr(self.daemon, "host_scope", None)
        payload = {
            "ready": not problems,
            "role": "leader" if self.is_leader() else "replica",
            "hosts": scope.describe() if scope is not None else "every host",
            "database": database,
            "executors": hosts,
            "problems": problems,
        }
        return (HTTPStatus.OK if not problems else HTTPStatus.SERVICE_UNAVAILABLE), payload

    def _check_database(self) -> str:
        try:
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except Exception as exc:
            log.warning("readiness: database check failed", error=f"{type(exc).__name__}: {exc}")
            return f"error: {type(exc).__name__}"
        return "ok"

    def _check_hosts(self) -> dict[str, str]:
        """host name -> "healthy" | "unhealthy" | "unknown": recorded status, else a live probe."""
        hosts = collector._model("ExecutorHost").objects.filter(is_active=True).order_by("name")
        names = getattr(getattr(self.daemon, "options", None), "host_names", ())
        if names:
            hosts = hosts.filter(name__in=list(names))
        rows = list(hosts)
        result = {h.name: str(h.health_status) for h in rows}
        if HEALTHY in result.values():
            return result
        for host in rows[:MAX_PROBES]:
            if self._probe(host):
                result[host.name] = HEALTHY
                break
        return result

    def _probe(self, host: Any) -> bool:
        executor_for = getattr(self.daemon, "executor_for", None)
        try:
            executor = executor_for(host) if executor_for is not None else host.get_executor()
            report = executor.health_check(timeout=PROBE_TIMEOUT)
        except Exception as exc:
            log.info("readiness: host probe failed", host=host.name, error=f"{type(exc).__name__}: {exc}")
            return False
        return bool(report.healthy)
