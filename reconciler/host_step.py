"""The host step: one work-queue key per executor host, run by the same workers as job steps.

For one host it: probes its health (a ping, recorded, so claims avoid a dead host and use a
recovered one again); keeps its event watcher running while the host is active and its
backend pushes events, and stops it otherwise; and takes the census of the containers carrying
this installation's labels: a finished attempt whose container is still there goes back to its
job (whose step hands it to the cleaner), and a container that belongs to no attempt at all is
removed once it has been seen for ``ORPHAN_GRACE_SECONDS`` (write-ahead guarantees its attempt
row would exist if it were ours and live). The resync brings every host's key back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from container_manager.conf import Policy
from container_manager.models import ExecutorHost
from executors.base import Executor
from executors.exceptions import ExecutorError
from metrics import definitions as m
from reconciler.orphans import census
from reconciler.outcome import DONE, Outcome, RequeueAfter
from reconciler.shards import AllHosts, HostScope

log = structlog.get_logger("reconciler.hosts")

#: timeout of one health probe.
PROBE_TIMEOUT_SECONDS = 5.0


@dataclass
class _Watcher:
    thread: threading.Thread
    stop: threading.Event = field(default_factory=threading.Event)


class HostReconciler:
    def __init__(
        self,
        *,
        policy: Policy,
        executor_for: Callable[[ExecutorHost], Executor],
        hint: Callable[[int], None],
        start_watcher: Callable[[str, Executor, threading.Event], threading.Thread] | None,
        hosts: HostScope | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.executor_for = executor_for
        #: look at a job again from a fresh read of its row (``Sources.hint``).
        self.hint = hint
        #: starts a thread that turns a host's events into keys (None: no watchers, e.g. one pass).
        self.start_watcher = start_watcher
        #: the hosts this replica drives (all, or its share of them).
        self.scope: HostScope = hosts if hosts is not None else AllHosts()
        self.clock = clock
        self._watchers: dict[int, _Watcher] = {}
        #: host pk -> {orphan container name: when first seen}; a host's dict is only touched by
        #: its own step, which the queue runs on one worker at a time.
        self._orphans_seen: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()

    def reconcile(self, host_pk: int) -> Outcome:
        host = ExecutorHost.objects.filter(pk=host_pk).first()
        if host is None or not host.is_active or not self.scope.owns(host.pk, host.name):
            self.release(host_pk)
            return DONE
        # Every pass probes (a ping): a host that dies with nothing running on it is marked
        # unhealthy before jobs are placed on it, and a recovered one is used again.
        healthy = bool(host.health_check(timeout=PROBE_TIMEOUT_SECONDS))
        m.HOST_HEALTHY.labels(host.name).set(1 if healthy else 0)
        try:
            executor = self.executor_for(host)
        except ExecutorError as exc:
            log.warning("host cannot be used", host=host.name, error=str(exc))
            return DONE
        self._ensure_watcher(host, executor)
        return self._sweep(host, executor)

    def _ensure_watcher(self, host: ExecutorHost, executor: Executor) -> None:
        if self.start_watcher is None or not executor.supports_events:
            return
        with self._lock:
            current = self._watchers.get(host.pk)
            if current is not None and current.thread.is_alive():
                return
            stop = threading.Event()
            self._watchers[host.pk] = _Watcher(self.start_watcher(host.name, executor, stop), stop)

    def release(self, host_pk: int) -> None:
        """Stop the host's event watcher (the host is gone, inactive, or driven by another replica)."""
        with self._lock:
            watcher = self._watchers.pop(host_pk, None)
        if watcher is not None:
            watcher.stop.set()

    def watchers(self) -> list[threading.Thread]:
        with self._lock:
            return [w.thread for w in self._watchers.values()]

    def close(self) -> None:
        """Stop every watcher (the daemon is stopping)."""
        with self._lock:
            watchers, self._watchers = list(self._watchers.values()), {}
        for watcher in watchers:
            watcher.stop.set()

    def _sweep(self, host: ExecutorHost, executor: Executor) -> Outcome:
        """Census of the host's labelled containers; orphans go once their grace period is over."""
        try:
            found = census(executor, self.policy.instance)
        except ExecutorError as exc:
            log.warning("cannot list containers", host=host.name, error=str(exc))
            return DONE
        for job_id in found.jobs_to_clean:
            # A fresh read: the step may have taken the job as finished and cleaned up already.
            self.hint(job_id)
        now = self.clock()
        grace = self.policy.orphan_grace_seconds
        previously = self._orphans_seen.get(host.pk, {})
        seen = {name: previously.get(name, now) for name in found.orphans}
        waiting: list[float] = []
        for name, first in list(seen.items()):
            if now - first >= grace:
                self._remove_orphan(host, executor, name)
                del seen[name]
            else:
                waiting.append(grace - (now - first))
        self._orphans_seen[host.pk] = seen
        if waiting:
            return RequeueAfter(min(waiting), "orphans in their grace period")
        return DONE

    def _remove_orphan(self, host: ExecutorHost, executor: Executor, name: str) -> None:
        try:
            executor.remove(name)
        except ExecutorError as exc:
            log.warning("cannot remove orphan", host=host.name, container=name, error=str(exc))
            return
        m.ORPHANS_REMOVED.labels(host.name).inc()
        log.info("orphan container removed", host=host.name, container=name)
