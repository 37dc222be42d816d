"""Where work comes from. Every source only adds keys to the work queue; it decides nothing.

* The poller: every poll interval (slower while NOTIFY is heard) it asks for a claim and looks for
  cancel requests on live jobs (SQLite has no NOTIFY; on PostgreSQL it is the safety net).
* The listener: PostgreSQL NOTIFY. A new row asks for a claim; a changed row (a cancel request)
  points at its job. Reconnecting asks for a resync, since notifications sent meanwhile are lost.
* Event watchers: one thread per host whose executor pushes events, started and stopped by the
  host reconciler; an exit puts the job's key at the front, a gap in the stream asks for a resync.
* The resync: every resync interval (or when asked) every job with work, every host and a claim.

A key for a job whose row changed outside this process goes through ``hint()``, which first drops
the snapshot the job step keeps between steps, so the step reads the row again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from django.db import close_old_connections

from container_manager.models import ContainerExecution, ExecutorHost
from container_manager.states import LIVE, LIVE_EXECUTION_VALUES
from executors.base import Executor
from executors.types import EventKind
from metrics import definitions as m
from reconciler import notify
from reconciler.keys import CLAIM, HostKey
from reconciler.queue import WorkQueue
from reconciler.shards import HostScope

log = structlog.get_logger("reconciler.sources")

#: with the NOTIFY listener connected, polling is only a safety net: at most this often.
LISTENING_POLL_SECONDS = 5.0


class Sources:
    def __init__(
        self,
        queue: WorkQueue,
        *,
        forget: Callable[[int], None],
        stop: threading.Event,
        poll_seconds: float,
        resync_seconds: float,
        hosts: HostScope,
        instance: str,
    ) -> None:
        self.queue = queue
        self.forget = forget
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.resync_seconds = resync_seconds
        #: the hosts this replica drives: only their jobs and hosts are enqueued.
        self.hosts = hosts
        self.instance = instance
        #: set to run the resync now (a stream gap, a reconnected listener, a stop).
        self.resync_now = threading.Event()
        #: set to wake the poller now (a stop).
        self.poll_now = threading.Event()
        #: the NOTIFY listener is connected: polling can slow down.
        self.listening = threading.Event()
        #: called after every resync pass (the daemon's liveness for its watchdog).
        self.on_resync: Callable[[], None] | None = None

    def hint(self, job_id: int, *, urgent: bool = False) -> None:
        """Look at ``job_id`` again, from a fresh read of its row."""
        self.forget(job_id)
        self.queue.add(job_id, urgent=urgent)

    def wake(self) -> None:
        self.resync_now.set()
        self.poll_now.set()

    # The poller --------------------------------------------------------------------

    def poll_loop(self, paused: Callable[[], bool]) -> None:
        while not self.stop.is_set():
            close_old_connections()
            if not paused():
                try:
                    self.poll()
                except Exception:
                    # A passing database error must not stop pickup; the next poll retries.
                    m.RECONCILE_ERRORS.labels("database").inc()
                    log.exception("poll failed")
            interval = self.poll_seconds
            if self.listening.is_set():
                interval = max(interval, LISTENING_POLL_SECONDS)
            self.poll_now.wait(interval)
            self.poll_now.clear()

    def poll(self) -> None:
        """Ask for a claim of due jobs, and look at the live jobs whose cancellation was requested."""
        self.queue.add(CLAIM)
        cancels = (
            ContainerExecution.objects.filter(
                status__in=LIVE_EXECUTION_VALUES,
                job__status__in=[s.value for s in LIVE],
                job__cancel_requested_at__isnull=False,
            )
            .filter(self.hosts.host_q("executor_host__"))
            .values_list("job_id", flat=True)
        )
        for job_id in cancels:
            self.hint(job_id)

    # The resync --------------------------------------------------------------------

    def resync_loop(self) -> None:
        while not self.stop.is_set():
            close_old_connections()
            try:
                self.resync()
            except Exception:
                log.exception("resync failed")
            self.resync_now.wait(self.resync_seconds)
            self.resync_now.clear()

    def resync(self) -> None:
        """Every job with work, every host, and a claim: the level-triggered pass that needs no event."""
        self.queue.add(CLAIM)
        for job_id in self.work_ids():
            self.hint(job_id)
        for host_pk in self.host_pks():
            self.queue.add(HostKey(host_pk))
        m.LAST_PASS.set(time.time())
        if self.on_resync is not None:
            self.on_resync()

    def work_ids(self) -> list[int]:
        """Jobs with work on this replica's hosts beyond claiming: an attempt still live, or
        finished and not cleaned up. Waiting jobs (pending, or retrying once their backoff has
        passed) are the claimer's (``CLAIM``): a statement for many rows.
        """
        attempts = ContainerExecution.objects.filter(self.hosts.host_q("executor_host__")).filter(
            cleaned_up=False
        )
        return list(attempts.values_list("job_id", flat=True).distinct())

    def host_pks(self) -> list[int]:
        """Every host this daemon drives (inactive ones too: their watchers must be stopped)."""
        return list(ExecutorHost.objects.filter(self.hosts.host_q()).values_list("pk", flat=True))

    # The listener ------------------------------------------------------------------

    def listen_loop(self) -> None:
        def connected(up: bool) -> None:
            if up:
                self.listening.set()
                self.resync_now.set()  # notifications sent while disconnected are lost
            else:
                self.listening.clear()

        notify.listen(self.notified, self.stop, on_connection=connected)

    def notified(self, kind: str, job_id: int) -> None:
        if kind == notify.NEW:
            self.queue.add(CLAIM)
        elif kind == notify.WAKE:
            if job_id != notify.TOKEN:
                self.queue.add(CLAIM)
        else:
            # A row changed from outside (a cancel request): what this process kept is stale.
            self.hint(job_id)

    # Event watchers ------------------------------------------------------------------

    def watch(self, host_name: str, executor: Executor, stop: threading.Event) -> None:
        """Turn one host's events into keys until ``stop`` (or the daemon's stop) is set."""
        while not (stop.is_set() or self.stop.is_set()):
            try:
                for event in executor.watch(self.instance, stop):
                    if self.stop.is_set():
                        return
                    m.EVENTS_RECEIVED.labels(host_name, event.kind.value).inc()
                    if event.kind is EventKind.RESYNC:
                        m.EVENT_STREAM_RECONNECTS.labels(host_name).inc()
                        self.resync_now.set()
                    elif event.job_id is not None and event.kind in (EventKind.DIED, EventKind.OOM):
                        # Only exits need a look (starts and removals are our own doing), and an
                        # exit is recorded before any launch waiting in the queue. An event changes
                        # no row: the job's kept snapshot stays valid.
                        self.queue.add(event.job_id, urgent=True)
            except Exception as exc:
                log.warning("event stream failed; reconnecting", host=host_name, error=str(exc))
                m.EVENT_STREAM_RECONNECTS.labels(host_name).inc()
                self.resync_now.set()
                stop.wait(1.0)
