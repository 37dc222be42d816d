"""The long-running daemon: lifecycle, leadership, the watchdog, and the workers.

Sources (``reconciler.sources``) only add keys to one work queue; workers take keys and run the
step each one names: a job's step (``reconciler.step``), the batch claim, the batch cleanup, or
a host's step (``reconciler.host_step``: health, event watcher, orphans). A step answers with an
``Outcome``; ``RequeueAfter`` puts its key back after that delay. Because the queue never hands
one key to two workers and the resync brings every key back, losing any event only delays
convergence until the next resync.

With several replicas on one PostgreSQL database each drives the hosts whose leases it holds
(``reconciler.shards``); the leader lease (``reconciler.leader``) is kept only for the leader's
duties, and a replica that loses it exits with ``LEADERSHIP_LOST_EXIT`` for its supervisor to
restart it. Containers are never stopped on the way out: the next driver of a host adopts them.
Under systemd (``Type=notify``) the daemon reports READY, STATUS, WATCHDOG and STOPPING through
``reconciler.sdnotify``; the watchdog is pinged from the main loop only while the loop's last
pass is recent, so a hung loop gets restarted.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from django.db import InterfaceError, OperationalError, close_old_connections, connections
from django.db.models import Q
from django.utils import timezone

from container_manager.conf import Policy, get_policy
from container_manager.models import ContainerJob, ExecutorHost
from container_manager.states import LIVE, JobStatus
from container_manager.transitions import Fenced, set_fence
from executors.backoff import backoff_seconds
from executors.base import Executor
from executors.exceptions import ExecutorError
from executors.registry import get_executor
from metrics import definitions as m
from reconciler import notify, record, schedules, sdnotify, waits
from reconciler.cleanup import Cleaner
from reconciler.host_step import HostReconciler
from reconciler.keys import CLAIM, CLEANUP, SCHEDULES, WAITS, HostKey
from reconciler.leader import (
    DEFAULT_LEASE_NAME,
    DEFAULT_TTL,
    Elector,
    LeaseElector,
    connect_for_leases,
    make_elector,
)
from reconciler.outcome import DONE, Outcome, RequeueAfter
from reconciler.queue import ShutDown, WorkQueue
from reconciler.shards import AllHosts, HostScope, HostShards, guard_hosts
from reconciler.sources import Sources
from reconciler.step import Reconciler

log = structlog.get_logger("reconciler.daemon")

#: exit status after losing the leader lease (EX_TEMPFAIL): the supervisor restarts us.
LEADERSHIP_LOST_EXIT = 75
#: the watchdog is pinged only while the last loop pass is younger than this many resyncs.
STALE_AFTER_RESYNCS = 3.0
#: seconds between two STATUS= updates while nothing changes.
STATUS_EVERY = 10.0
#: finished containers are removed in batches, at most this long after their attempt ended.
CLEANUP_DELAY_SECONDS = 0.25
#: a job whose step raised this many times in a row is failed (``reconcile_error``).
STEP_FAILURE_LIMIT = 5
#: backoff between two tries of a step that raised.
STEP_RETRY_BASE_SECONDS = 1.0
STEP_RETRY_MAX_SECONDS = 60.0
#: a worker checks its database connection (and drops a broken one) at most this often.
CONNECTION_CHECK_SECONDS = 10.0


def default_actor() -> str:
    return f"daemon:{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class DaemonOptions:
    workers: int = 4
    #: None = the policy's RESYNC_SECONDS / POLL_SECONDS.
    resync_seconds: float | None = None
    poll_seconds: float | None = None
    #: only these hosts (by name); empty = all.
    host_names: tuple[str, ...] = ()
    #: one pass over every job that has work, then exit.
    once: bool = False
    #: run until no job is pending, launching, running or retrying, then exit.
    until_idle: bool = False
    actor: str = field(default_factory=default_actor)
    #: how many due jobs one claim takes at most.
    claim_batch: int = 100
    #: "off" (this process always leads) or "auto" (a lease on PostgreSQL, one replica on SQLite).
    leader_election: str = "off"
    lease_name: str = DEFAULT_LEASE_NAME
    #: lease time-to-live (s): a paused leader is replaced after about this long.
    lease_seconds: float = DEFAULT_TTL
    #: at startup, wait up to this long for at least one executor host to answer.
    startup_wait_seconds: float = 30.0


class Daemon:
    def __init__(
        self,
        options: DaemonOptions | None = None,
        *,
        policy: Policy | None = None,
        executor_for: Callable[[ExecutorHost], Executor] = get_executor,
    ) -> None:
        self.options = options or DaemonOptions()
        self.policy = policy or get_policy()
        self.elector: Elector = make_elector(
            self.options.leader_election,
            name=self.options.lease_name,
            ttl=self.options.lease_seconds,
            oneshot=self.options.once,
        )
        #: the hosts this replica drives: a share of them, through host leases (PostgreSQL with
        #: election), or every one (a single replica: SQLite, --leader-election off, --once).
        self.host_scope: HostScope = self._make_scope()
        if isinstance(self.host_scope, HostShards):
            executor_for = guard_hosts(executor_for, self.host_scope)
        self.executor_for = executor_for
        self.notifier = sdnotify.Notifier.from_environ()
        self.queue = WorkQueue()
        # Removal is never urgent (outcome and logs are recorded): wait a little, remove a batch.
        self.cleaner = Cleaner(
            executor_for, wake=lambda: self.queue.add_after(CLEANUP, CLEANUP_DELAY_SECONDS)
        )
        self.reconciler = Reconciler(
            actor=self.options.actor,
            policy=self.policy,
            executor_for=executor_for,
            hosts=self.host_scope,
            cache=True,
            request_claim=self._request_claim,
            cleaner=self.cleaner,
        )
        # An attempt that ends frees a slot: claim at once to fill it.
        self.reconciler.on_slot_freed = self._request_claim
        self.stop_event = threading.Event()
        #: a source or worker thread died: the daemon stops and exits non-zero.
        self.crashed = False
        self._local = threading.local()
        self._threads: list[threading.Thread] = []
        self._failures: dict[Any, int] = {}
        #: monotonic time of the last completed loop activity, for /healthz.
        self.last_pass = time.monotonic()
        self.ready = threading.Event()
        self.resync_seconds = self.options.resync_seconds or self.policy.resync_seconds
        self.poll_seconds = self.options.poll_seconds or self.policy.poll_seconds
        self.sources = Sources(
            self.queue,
            forget=self.reconciler.forget,
            stop=self.stop_event,
            poll_seconds=self.poll_seconds,
            resync_seconds=self.resync_seconds,
            hosts=self.host_scope,
            instance=self.policy.instance,
        )
        self.sources.on_resync = self._resynced
        self.hosts = HostReconciler(
            policy=self.policy,
            executor_for=executor_for,
            hint=self.sources.hint,
            start_watcher=None if self.options.once else self._start_watcher,
            hosts=self.host_scope,
        )
        #: the watchdog is pinged only while ``last_pass`` is younger than this (as /healthz).
        self.stale_after = STALE_AFTER_RESYNCS * self.resync_seconds
        #: the work-queue keys that name a pass (not a job or a host), and the pass each runs.
        self._passes: dict[str, Callable[[], Outcome]] = {
            CLAIM: self._claim,
            CLEANUP: self.cleaner.run,
            SCHEDULES: lambda: schedules.step(actor=self.options.actor),
            WAITS: lambda: waits.step(actor=self.options.actor, every=self.resync_seconds),
        }
        self._status = ("", 0.0)
        self._stopping_sent = False
        self._ready_sent = False

    # Lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or idle, with ``once``/``until_idle``); returns an exit code.

        0 after a requested stop, ``LEADERSHIP_LOST_EXIT`` after losing leadership. Raises a
        ``ReconcilerError`` (clear message) when this replica may not run at all.
        """
        if self.options.once:
            m.zero_initialise(self._hosts().values_list("name", flat=True))
            self.elector.start_oneshot()
            try:
                return self._run_once()
            finally:
                self.elector.stop()
        self._set_status("starting: waiting for the database")
        if not self._wait_until_reachable():
            self.shutdown()
            return 0
        m.zero_initialise(self._hosts().values_list("name", flat=True))
        # SQLite: refuses to start beside another daemon. PostgreSQL: campaigns in the background
        # for the leader's duties (the job-table metrics); every replica drives its hosts.
        self.elector.start()
        self.host_scope.start()
        if isinstance(self.host_scope, HostShards):
            set_fence(self._fence)
        try:
            self._start(self.sources.resync_loop, "resync")
            self._start(lambda: self.sources.poll_loop(paused=lambda: self.reconciler.draining), "poller")
            if notify.is_postgres():
                self._start(self.sources.listen_loop, "listener")
            for index in range(max(1, self.options.workers)):
                self._start(self._worker_loop, f"worker-{index}")
            self.queue.add(SCHEDULES)
            self.queue.add(WAITS)
            self._announce_ready()
            log.info(
                "daemon started",
                workers=self.options.workers,
                actor=self.options.actor,
                hosts=self.host_scope.describe(),
                role=self.elector.describe(),
            )
            return self._lead()
        finally:
            self.shutdown()

    def request_stop(self) -> None:
        """Graceful stop: claim nothing new, let in-flight steps finish, then exit."""
        self.reconciler.draining = True
        self.stop_event.set()
        self.sources.wake()  # the resync and poll loops see the stop at once
        self.hosts.close()
        if not self._stopping_sent:
            self._stopping_sent = True
            self.notifier.stopping("stopping: finishing in-flight steps; containers keep running")

    def shutdown(self, timeout: float = 60.0) -> None:
        self.request_stop()
        self.queue.shutdown()
        deadline = time.monotonic() + timeout
        tick = self._tick()
        for thread in self._threads + self.hosts.watchers():
            while thread.is_alive() and time.monotonic() < deadline:
                # Keep the watchdog fed while draining: the loop is alive, just finishing work.
                thread.join(min(tick, max(0.0, deadline - time.monotonic())))
                if self.notifier.ping_due(slack=tick / 2):
                    self.notifier.ping()
        if len(self.cleaner) and not self.elector.lost:
            # Removals noted but not yet done (they wait a moment to be batched): do them now
            # (for the hosts this replica still holds; the others' drivers clean theirs).
            self._guarded("cleanup", self.cleaner.run)
        set_fence(None)
        # Only now, with every fenced write done, hand the leases over (at once, not after TTL).
        self.host_scope.stop(release=not self.elector.lost)
        self.elector.stop(release=not self.elector.lost)
        # The thread that ran the daemon used the database too (start-up, idle checks); its
        # connection would otherwise outlive the daemon when run() is called from a thread.
        for conn in connections.all(initialized_only=True):
            if not conn.in_atomic_block:
                conn.close()
        log.info("daemon stopped")

    def is_leader(self) -> bool:
        """True while this replica leads (always, without leader election); for /readyz and metrics."""
        return self.elector.is_leader()

    # Leadership, readiness and the watchdog -------------------------------------------

    def _tick(self) -> float:
        """How often the main loop wakes: for the until-idle check, leadership and the watchdog."""
        interval = self.notifier.watchdog_interval
        return min(self.poll_seconds, 0.5, interval / 2 if interval else math.inf)

    def _wait_until_reachable(self) -> bool:
        """Block until the database answers and (for a while) an executor host does; False if stopped."""
        while not self.stop_event.is_set():
            try:
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT 1")
                break
            except Exception as exc:
                self._set_status(f"starting: database unreachable ({type(exc).__name__}); retrying")
                log.warning("database unreachable; retrying", error=str(exc))
                connections.close_all()
                self._feed_watchdog(alive=True)
                self.stop_event.wait(1.0)
        deadline = time.monotonic() + self.options.startup_wait_seconds
        while not self.stop_event.is_set():
            down = self._unreachable_hosts()
            if down is None:
                return True
            if time.monotonic() >= deadline:
                log.warning("no executor host answers yet; starting anyway", hosts=down)
                return True
            self._set_status(f"starting: waiting for an executor host ({', '.join(down)} unreachable)")
            self._feed_watchdog(alive=True)
            self.stop_event.wait(1.0)
        return False

    def _unreachable_hosts(self) -> list[str] | None:
        """None when some active host answers a health check (or none is configured)."""
        down: list[str] = []
        for host in self._hosts():
            try:
                if self.executor_for(host).health_check(timeout=5.0).healthy:
                    return None
            except ExecutorError:
                pass
            down.append(host.name)
        return down or None

    def _lead(self) -> int:
        """The main loop: watch the leases, feed the watchdog, detect idleness."""
        while not self.stop_event.wait(self._tick()):
            if self.elector.lost:
                break
            self._feed_watchdog()
            self._set_status(
                f"{self.elector.describe()}; {self.host_scope.describe()}: {len(self.queue)} queued, "
                f"last pass {time.monotonic() - self.last_pass:.0f} s ago",
                every=STATUS_EVERY,
            )
            if self.options.until_idle and self._idle():
                log.info("no unfinished jobs left; exiting")
                return 0
        if self.elector.lost:
            log.error("leader lease lost; exiting to be restarted", reason=self.elector.lost_reason)
            self.notifier.status(f"leadership lost: {self.elector.lost_reason}")
            return LEADERSHIP_LOST_EXIT
        return 1 if self.crashed else 0

    def _announce_ready(self) -> None:
        self.ready.set()
        if not self._ready_sent:
            self._ready_sent = True
            self._status = (self.elector.describe(), time.monotonic())
            self.notifier.ready(self._status[0])

    def _set_status(self, text: str, every: float | None = None) -> None:
        """Send STATUS= when ``text`` changes (or, with ``every``, at most that often)."""
        last, at = self._status
        now = time.monotonic()
        if every is not None:
            if now - at < every:
                return
        elif text == last:
            return
        self._status = (text, now)
        self.notifier.status(text)

    def _feed_watchdog(self, *, alive: bool | None = None) -> None:
        """WATCHDOG=1 when due, but only while the loop makes progress (else systemd restarts us)."""
        if not self.notifier.ping_due(slack=self._tick() / 2):
            return
        if alive is None:
            alive = time.monotonic() - self.last_pass < self.stale_after
        if alive:
            self.notifier.ping()
        else:
            log.error(
                "loop stalled; withholding the watchdog ping", last_pass_age=time.monotonic() - self.last_pass
            )

    def _start(self, target: Callable[[], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except ShutDown:
                pass
            except Exception:
                log.exception("daemon thread crashed", thread=name)
                self.crashed = True  # exit non-zero, so the supervisor restarts the daemon
                self.request_stop()
            finally:
                connections.close_all()

        thread = threading.Thread(target=run, name=f"cm-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _run_once(self) -> int:
        """Claim what can be claimed, take every job and host with work one step further, exit."""
        self.queue.add(SCHEDULES)  # first: the jobs of due ticks are then claimed in this pass
        self.queue.add(WAITS)
        self.queue.add(CLAIM)
        for job_id in self.sources.work_ids():
            self.queue.add(job_id)
        done: set[Any] = set()
        while True:
            key = self.queue.get(timeout=0)
            if key is None:
                break
            try:
                if key not in done:
                    done.add(key)
                    outcome = self._process(key)
                    if key == CLAIM and outcome != DONE:
                        done.discard(CLAIM)
                        self.queue.add(CLAIM)
            finally:
                self.queue.done(key)
        # Removals wait a moment to be batched; a single pass does them before it ends, then
        # takes each host's census (which may find more to remove).
        self._guarded("cleanup", self.cleaner.run)
        for host_pk in self.sources.host_pks():
            self._process(HostKey(host_pk))
        return 0

    def _request_claim(self) -> None:
        """Ask for due jobs to be claimed (the claim runs as one key, so requests coalesce)."""
        self.queue.add(CLAIM)

    # Workers --------------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while not self.stop_event.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            self._check_connection()
            try:
                outcome = self._process(key)
            finally:
                self.queue.done(key)
            if isinstance(outcome, RequeueAfter) and not self.stop_event.is_set():
                self.queue.add_after(key, outcome.seconds)
            m.QUEUE_DEPTH.set(len(self.queue))
            m.QUEUE_DELAYED.set(self.queue.delayed)

    def _check_connection(self) -> None:
        """Drop a broken or expired database connection, but not before every step (it costs a query)."""
        now = time.monotonic()
        if now - getattr(self._local, "checked", 0.0) >= CONNECTION_CHECK_SECONDS:
            self._local.checked = now
            close_old_connections()

    def _process(self, key: Any) -> Outcome:
        if isinstance(key, str):
            return self._guarded(key, self._passes[key])
        if isinstance(key, HostKey):
            return self._guarded(key, lambda: self.hosts.reconcile(key.pk))
        # Every log record of this step (stdlib ones too) carries the job id.
        with structlog.contextvars.bound_contextvars(job_id=key):
            return self._step(key)

    def _claim(self) -> Outcome:
        claimed = self.reconciler.claim(limit=self.options.claim_batch)
        for snap in claimed.snapshots:
            self.queue.add(snap.job.pk)
        return RequeueAfter(0.0, "more due jobs") if claimed.more else DONE

    def _guarded(self, what: Any, run: Callable[[], Outcome]) -> Outcome:
        try:
            outcome = run()
            self._failures.pop(what, None)
        except Fenced:
            log.warning("write refused: this replica no longer holds the lease", work=what)
            return RequeueAfter(1.0, "fenced")
        except Exception as exc:
            return self._failed(what, exc)
        self.last_pass = time.monotonic()
        return outcome

    def _step(self, job_id: int) -> Outcome:
        try:
            outcome = self.reconciler.reconcile(job_id)
            self._failures.pop(job_id, None)
        except Fenced:
            # The host's lease (or leadership) is gone: write nothing more about it.
            log.warning("write refused: this replica no longer holds the lease", job_id=job_id)
            return RequeueAfter(1.0, "fenced")
        except Exception as exc:
            self.reconciler.forget(job_id)
            outcome = self._failed(job_id, exc)
            if self._failures.get(job_id, 0) >= STEP_FAILURE_LIMIT and not _database_error(exc):
                outcome = self._give_up(job_id, exc)
        self.last_pass = time.monotonic()
        return outcome

    def _failed(self, key: Any, exc: Exception) -> Outcome:
        if self.elector.lost:
            # e.g. the session of a leader paused inside a transaction was ended by the server;
            # the main loop stops the daemon, and this is not the work's fault.
            log.warning("step abandoned: this replica lost its lease", work=key, error=str(exc))
            return RequeueAfter(1.0, "lease lost")
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        m.RECONCILE_ERRORS.labels("database" if _database_error(exc) else "internal").inc()
        if isinstance(exc, OperationalError | InterfaceError):
            # e.g. the server ended the session (a restart, an idle timeout while we were paused).
            log.warning("reconcile failed: database unavailable", work=key, error=str(exc))
        else:
            log.exception("reconcile failed", work=key, failures=failures)
        delay = backoff_seconds(key, failures, STEP_RETRY_BASE_SECONDS, STEP_RETRY_MAX_SECONDS)
        return RequeueAfter(delay, f"failed {failures} time(s)")

    def _give_up(self, job_id: int, exc: Exception) -> Outcome:
        """A job whose step keeps raising is failed with a clear reason, so it cannot wedge anything."""
        message = (
            f"the reconciler failed on this job {STEP_FAILURE_LIMIT} times in a row: {type(exc).__name__}"
        )
        try:
            if record.give_up(job_id, message, actor=self.options.actor, now=timezone.now()):
                log.error("job failed after repeated step errors", job_id=job_id, error=type(exc).__name__)
                self._failures.pop(job_id, None)
                return RequeueAfter(0.0, "clean up after giving up")
        except Exception:
            log.exception("could not fail the job after repeated step errors", job_id=job_id)
        return RequeueAfter(60.0, "giving up failed")

    # Host leases ----------------------------------------------------------------------

    def _make_scope(self) -> HostScope:
        names = self.options.host_names or None
        elector = self.elector
        if isinstance(elector, LeaseElector) and not self.options.once:
            return HostShards(
                name=self.options.lease_name,
                holder=elector.holder,
                ttl=self.options.lease_seconds,
                connect=lambda: connect_for_leases(elector),
                on_change=self._hosts_changed,
                host_names=names,
            )
        return AllHosts(names)

    def _fence(self, hosts: tuple[int, ...]) -> bool:
        """In a status-changing transaction: does this replica still hold these hosts' leases?"""
        if not hosts:
            return True  # a waiting job settled: the compare-and-swap alone keeps it right
        assert isinstance(self.host_scope, HostShards)
        with connections["default"].cursor() as cursor:
            return self.host_scope.fence(hosts, cursor)

    def _hosts_changed(self, gained: set[int], lost: set[int]) -> None:
        """A host lease came or went: stop touching a lost host at once, look at a new one now."""
        for pk in lost:
            self.hosts.release(pk)
            self.reconciler.forget_host(pk)
        for pk in gained:
            self.queue.add(HostKey(pk))
        if gained:
            self.sources.resync_now.set()  # its jobs, and due jobs for its free slots

    # Sources and hosts -----------------------------------------------------------------

    def _hosts(self) -> Any:
        hosts = ExecutorHost.objects.filter(is_active=True)
        if self.options.host_names:
            hosts = hosts.filter(name__in=self.options.host_names)
        return hosts

    def _start_watcher(self, host_name: str, executor: Executor, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=self.sources.watch,
            args=(host_name, executor, stop),
            name=f"cm-watch-{host_name}",
            daemon=True,
        )
        thread.start()
        return thread

    def _resynced(self) -> None:
        self.last_pass = time.monotonic()

    def poll(self) -> None:
        """Ask for a claim of due jobs, and look at live jobs whose cancellation was requested."""
        self.sources.poll()

    def resync(self) -> None:
        """Every job with work, every host, and a claim, as the periodic resync does."""
        self.sources.resync()

    def _idle(self) -> bool:
        """Nothing runs, waits for a retry or is due, and no key is queued or in progress.

        Jobs scheduled for later (a ``run_after`` in the future) do not keep the daemon up.
        """
        busy = Q(status__in=[s.value for s in (*LIVE, JobStatus.RETRYING)])
        ready = Q(run_after__isnull=True) | Q(run_after__lte=timezone.now())
        waiting = ContainerJob.objects.filter(busy | (Q(status=JobStatus.PENDING.value) & ready)).exists()
        return not waiting and self.queue.idle() and not len(self.cleaner)

    def enqueue(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            self.queue.add(job_id)


def _database_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("django.db", "psycopg", "sqlite3"))
