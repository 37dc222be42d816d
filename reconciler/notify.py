"""PostgreSQL LISTEN/NOTIFY: the fast path for picking up new rows and cancel requests.

A trigger (see the migrations) notifies the channel on every INSERT into the job table and on
every cancel request, including rows written by plain SQL. On other databases these
functions do nothing and the daemon relies on polling.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from django.db import connection

CHANNEL = "container_manager_jobs"
log = structlog.get_logger("reconciler.notify")


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def notify_job(job_id: int) -> None:
    """Wake listening daemons about ``job_id`` (delivered at commit; no-op off PostgreSQL)."""
    if not is_postgres():
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, str(job_id)])


def listen(on_job: Callable[[int], None], stop: threading.Event, on_reconnect: Callable[[], None]) -> None:
    """Block, calling ``on_job(id)`` for every notification until ``stop`` is set.

    Uses its own autocommit connection; reconnects after errors and calls ``on_reconnect``
    (notifications sent while disconnected are lost, so the caller resyncs).
    """
    import psycopg

    settings_dict = connection.settings_dict
    conninfo = psycopg.conninfo.make_conninfo(
        dbname=settings_dict["NAME"],
        user=settings_dict.get("USER") or None,
        password=settings_dict.get("PASSWORD") or None,
        host=settings_dict.get("HOST") or None,
        port=str(settings_dict.get("PORT") or "") or None,
    )
    while not stop.is_set():
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                on_reconnect()
                while not stop.is_set():
                    for notification in conn.notifies(timeout=0.5):
                        try:
                            on_job(int(notification.payload))
                        except ValueError:
                            continue
        except psycopg.Error as exc:
            log.warning("notification listener disconnected", error=str(exc))
            stop.wait(1.0)
