"""The keys of the work queue: what a worker is asked to reconcile next.

A job's key is its id (``int``); a host's is ``HostKey(pk)``; ``CLAIM`` asks for due jobs to
be claimed, ``CLEANUP`` for finished attempts' containers to be removed, ``SCHEDULES`` for the
due ticks of cron schedules to be materialised (it is requeued at the next tick) and ``WAITS``
for jobs that wait on a dependency cycle to be cancelled (``reconciler.waits``). The queue
hands a key to one worker at a time, so two steps never race on the same job, host, claim,
cleanup or schedule pass.
"""

from __future__ import annotations

from dataclasses import dataclass

CLAIM = "claim"
CLEANUP = "cleanup"
SCHEDULES = "schedules"
WAITS = "waits"


@dataclass(frozen=True)
class HostKey:
    """The host reconciler's key for one executor host."""

    pk: int
