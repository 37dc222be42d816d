"""A de-duplicating work queue of job keys, with delayed re-adds.

Semantics (as in Kubernetes' client-go workqueue): a key is in the queue at most once; a key
being processed is never handed to a second worker; a key added while it is processed is
queued again when the worker calls ``done()``. ``add_after()`` keeps only the earliest
pending deadline per key.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Hashable


class ShutDown(Exception):
    """The queue was shut down."""


class WorkQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._deadline: dict[Hashable, float] = {}
        self._seq = 0
        self._shutdown = False

    def add(self, key: Hashable, *, urgent: bool = False) -> None:
        """Queue ``key``; ``urgent`` puts it at the front (a container just exited: record it first)."""
        with self._cond:
            self._add_locked(key, urgent=urgent)

    def _add_locked(self, key: Hashable, *, urgent: bool = False) -> None:
        if self._shutdown:
            return
        if key in self._dirty:
            if urgent and key not in self._processing and self._queue and self._queue[0] != key:
                self._queue.remove(key)
                self._queue.appendleft(key)
            return
        self._dirty.add(key)
        if key not in self._processing:
            if urgent:
                self._queue.appendleft(key)
            else:
                self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        due = time.monotonic() + delay
        with self._cond:
            if self._shutdown:
                return
            current = self._deadline.get(key)
            if current is not None and current <= due:
                return
            self._deadline[key] = due
            self._seq += 1
            heapq.heappush(self._delayed, (due, self._seq, key))
            self._cond.notify()

    def _promote_due_locked(self) -> float | None:
        """Move due delayed keys into the queue; returns seconds until the next one."""
        now = time.monotonic()
        while self._delayed:
            due, _, key = self._delayed[0]
            if self._deadline.get(key) != due:
                heapq.heappop(self._delayed)  # superseded by an earlier deadline
                continue
            if due > now:
                return due - now
            heapq.heappop(self._delayed)
            del self._deadline[key]
            self._add_locked(key)
        return None

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key (marked as processing), or None after ``timeout``; raises ShutDown."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._shutdown:
                    raise ShutDown()
                wait = self._promote_due_locked()
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                if end is not None:
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutdown:
                self._queue.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def delayed(self) -> int:
        with self._cond:
            return len(self._deadline)

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self._processing)

    def idle(self) -> bool:
        """Nothing queued, nothing in progress (delayed keys may remain)."""
        with self._cond:
            self._promote_due_locked()
            return not self._queue and not self._processing
