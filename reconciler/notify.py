"""PostgreSQL LISTEN/NOTIFY: the fast path for picking up new rows and cancel requests.

A trigger (see the migrations) notifies the channel on every INSERT into the job table and on
every cancel request, including rows written by plain SQL. The payload says which
(``INSERT:<id>`` or ``UPDATE:<id>``), so a burst of new rows only asks the daemon to claim,
while a cancel request points at the one job it concerns. A replica that left due jobs to the
replicas driving the hosts chosen for them wakes those with ``CLAIM:<token>`` (``wake_claimers``;
each process ignores its own token). On other databases the daemon relies on polling.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

import structlog
from django.db import connection

CHANNEL = "container_manager_jobs"
#: kinds of notification: a new row (claim it), a change to an existing one (look at it), or
#: another replica asking for a claim (the number is its token, not a job).
NEW = "new"
CHANGED = "changed"
WAKE = "wake"
#: this process's token in its own ``CLAIM:`` notifications.
TOKEN = secrets.randbelow(2**62) + 1
#: at most one wake-up per this many seconds: replicas whose views of who drives which host
#: differ for a moment (a hand-over) would otherwise pass jobs to each other as fast as they can.
WAKE_EVERY_SECONDS = 0.2
_last_wake = [0.0]
log = structlog.get_logger("reconciler.notify")


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def parse(payload: str) -> tuple[str, int] | None:
    """``(kind, job id)`` of a notification's payload; None for one that is not ours."""
    operation, _, number = payload.rpartition(":")
    try:
        job_id = int(number)
    except ValueError:
        return None
    if operation == "CLAIM":
        return WAKE, job_id
    return (NEW if operation == "INSERT" else CHANGED), job_id


def wake_claimers() -> None:
    """Ask the other replicas to claim now (after this process committed a claim)."""
    now = time.monotonic()
    if not is_postgres() or now - _last_wake[0] < WAKE_EVERY_SECONDS:
        return
    _last_wake[0] = now
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, f"CLAIM:{TOKEN}"])


def listen(
    on_notification: Callable[[str, int], None],
    stop: threading.Event,
    on_connection: Callable[[bool], None],
) -> None:
    """Block, calling ``on_notification(kind, job_id)`` for every notification until ``stop`` is set.

    Uses its own autocommit connection; reconnects after errors. ``on_connection(True)`` is
    called once listening, ``on_connection(False)`` when the connection is lost (notifications
    sent meanwhile are lost, so the caller resyncs when it comes back).
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
                on_connection(True)
                while not stop.is_set():
                    for notification in conn.notifies(timeout=0.5):
                        parsed = parse(notification.payload)
                        if parsed is not None:
                            on_notification(*parsed)
        except psycopg.Error as exc:
            on_connection(False)
            log.warning("notification listener disconnected", error=str(exc))
            stop.wait(1.0)
