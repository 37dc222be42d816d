"""The only code that changes a job's status: compare-and-swap UPDATEs plus a history row.

``transition()`` runs ``UPDATE ... SET status=target WHERE id=%s AND status=source`` and, when
a row changed, appends a ``JobEvent`` in the same transaction and sends the signals after
commit. Zero rows changed means someone else (another daemon, an admin action) moved the job
first: the caller re-reads and decides again, nothing is lost or overwritten.

A *fence* may be installed by the daemon (host leases): it is evaluated inside the same
transaction and a False answer aborts the write, so a replica that lost a host (or was paused
while another took it over) cannot write for it. The hosts a write concerns are named with
``fenced_for(...)`` around it; writes that concern no host (a waiting job settled) rely on the
compare-and-swap alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from container_manager import signals
from container_manager.exceptions import ContainerManagerError, InvalidTransition
from container_manager.states import TERMINAL, JobStatus, can_transition

logger = logging.getLogger(__name__)


class Fenced(ContainerManagerError):
    """This process no longer holds the lease it was writing under."""


_fence: Callable[[tuple[int, ...]], bool] | None = None
_fence_hosts: ContextVar[tuple[int, ...]] = ContextVar("container_manager_fence_hosts", default=())


def set_fence(fence: Callable[[tuple[int, ...]], bool] | None) -> None:
    """Install (or remove, with None) a check run inside every status-changing transaction.

    It is given the host pks named by the enclosing ``fenced_for`` (possibly none).
    """
    global _fence
    _fence = fence


@contextmanager
def fenced_for(*host_pks: int | None) -> Iterator[None]:
    """The executor hosts the status changes inside this block concern (for the fence)."""
    token = _fence_hosts.set(tuple(pk for pk in host_pks if pk is not None))
    try:
        yield
    finally:
        _fence_hosts.reset(token)


def check_fence() -> None:
    if _fence is not None and not _fence(_fence_hosts.get()):
        raise Fenced()


def send_after_commit(signal: Any, **kwargs: Any) -> None:
    from container_manager.models import ContainerJob

    def send() -> None:
        for receiver, result in signal.send_robust(sender=ContainerJob, **kwargs):
            if isinstance(result, Exception):
                logger.error("signal receiver %r failed: %s", receiver, result)

    transaction.on_commit(send)


def transition(
    job_id: int,
    source: JobStatus | str,
    target: JobStatus | str,
    *,
    actor: str,
    reason: str = "",
    message: str = "",
    attempt: int | None = None,
    fields: dict[str, Any] | None = None,
    where: Q | None = None,
    now: datetime | None = None,
    exit_code: int | None = None,
    savepoint: bool = True,
) -> bool:
    """Move job ``job_id`` from ``source`` to ``target`` if it is still in ``source``.

    ``fields`` are written in the same UPDATE; ``where`` adds conditions to the compare. Returns
    False when the row was not in the expected state (lost race), True when it moved. A caller
    that holds a transaction it will not continue after an error here may pass
    ``savepoint=False``: two statements fewer.
    """
    source, target = JobStatus(source), JobStatus(target)
    if not can_transition(source, target):
        raise InvalidTransition(f"a job cannot go from {source} to {target}")
    from container_manager.models import ContainerJob, JobEvent

    now = now or timezone.now()
    values: dict[str, Any] = {"status": target.value, "updated_at": now}
    if target in TERMINAL:
        values.setdefault("finished_at", now)
    values.update(fields or {})
    query = Q(pk=job_id, status=source.value)
    if where is not None:
        query &= where
    with transaction.atomic(savepoint=savepoint):
        check_fence()
        changed = ContainerJob.objects.filter(query).update(**values)
        if not changed:
            return False
        JobEvent.objects.create(
            job_id=job_id,
            at=now,
            attempt=attempt,
            from_status=source.value,
            to_status=target.value,
            actor=actor,
            reason=reason,
            message=message[:4000],
        )
        send_after_commit(
            signals.job_status_changed,
            job_id=job_id,
            old_status=source.value,
            new_status=target.value,
            reason=reason,
            attempt=attempt,
            actor=actor,
        )
        if target in TERMINAL:
            send_after_commit(
                signals.job_finished,
                job_id=job_id,
                status=target.value,
                reason=reason,
                exit_code=values.get("exit_code", exit_code),
            )
    return True


@dataclass(frozen=True)
class Move:
    """One job's part of a batch transition: where it comes from, and what its history row says."""

    job_id: int
    source: JobStatus
    attempt: int | None = None
    message: str = ""


class _Raced(Exception):
    """A job of a batch was no longer in its source status: roll the whole batch back."""


def transition_many(
    moves: Sequence[Move],
    target: JobStatus | str,
    *,
    actor: str,
    reason: str = "",
    fields: dict[str, Any] | None = None,
    now: datetime | None = None,
    savepoint: bool = True,
) -> bool:
    """Move every job of ``moves`` to ``target`` in one UPDATE and one history INSERT, or none.

    Meant for batches the caller has locked (the reconciler's claims): False, with nothing
    written, when any job was no longer in its source status (with ``savepoint=False`` the
    caller's transaction is then marked for rollback). ``fields`` are the same for all.
    Terminal targets go through ``transition()``, one job at a time, with their own signals.
    """
    if not moves:
        return True
    target = JobStatus(target)
    if target in TERMINAL:
        raise InvalidTransition(f"batch transitions to a terminal status ({target}) are not supported")
    for move in moves:
        if not can_transition(move.source, target):
            raise InvalidTransition(f"a job cannot go from {move.source} to {target}")
    from container_manager.models import ContainerJob, JobEvent

    now = now or timezone.now()
    values: dict[str, Any] = {"status": target.value, "updated_at": now, **(fields or {})}
    sources = sorted({JobStatus(m.source).value for m in moves})
    try:
        with transaction.atomic(savepoint=savepoint):
            check_fence()
            changed = ContainerJob.objects.filter(
                pk__in=[m.job_id for m in moves], status__in=sources
            ).update(**values)
            if changed != len(moves):
                raise _Raced()
            JobEvent.objects.bulk_create(
                JobEvent(
                    job_id=m.job_id,
                    at=now,
                    attempt=m.attempt,
                    from_status=JobStatus(m.source).value,
                    to_status=target.value,
                    actor=actor,
                    reason=reason,
                    message=m.message[:4000],
                )
                for m in moves
            )
            for m in moves:
                send_after_commit(
                    signals.job_status_changed,
                    job_id=m.job_id,
                    old_status=JobStatus(m.source).value,
                    new_status=target.value,
                    reason=reason,
                    attempt=m.attempt,
                    actor=actor,
                )
    except _Raced:
        return False
    return True


def note(job_id: int, *, actor: str, message: str, reason: str = "", attempt: int | None = None) -> None:
    """Append a history row that records a request or observation without a status change."""
    from container_manager.models import JobEvent

    JobEvent.objects.create(
        job_id=job_id, actor=actor, reason=reason, message=message[:4000], attempt=attempt
    )
