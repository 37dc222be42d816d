"""The reconciler's entry points for the app: a job's step, run in the caller's process.

``job.launch()``, ``job.get_status()`` and ``job.harvest()`` reach these through
``container_manager.driving`` (the app's one door into the reconciler) and run
``Reconciler.reconcile`` for that job exactly as a daemon worker would, so the seed's examples
work with or without a daemon and can never launch a job twice when one runs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from container_manager.exceptions import JobStateError

if TYPE_CHECKING:
    from container_manager.models import ContainerExecution, ContainerJob
    from reconciler.step import Reconciler

_lock = threading.Lock()
_reconciler: Reconciler | None = None


def get_reconciler() -> Reconciler:
    """The process-wide reconciler used by the model methods (actor "api")."""
    global _reconciler
    with _lock:
        if _reconciler is None:
            from reconciler.step import Reconciler

            _reconciler = Reconciler(actor="api")
        return _reconciler


def reset() -> None:
    """Forget the cached reconciler (after settings change, in tests)."""
    global _reconciler
    with _lock:
        _reconciler = None


def launch_job(job: ContainerJob) -> str:
    if job.pk is None:
        raise JobStateError("save the job before launching it")
    job.refresh_from_db()
    if job.is_terminal_status:
        raise JobStateError(f"job {job.pk} is already {job.status}; use rerun() to run it again")
    get_reconciler().reconcile(job.pk)
    job.refresh_from_db()
    return job.status


def observe_job(job: ContainerJob) -> str:
    job.refresh_from_db()
    if not job.is_terminal_status:
        get_reconciler().reconcile(job.pk)
        job.refresh_from_db()
    return job.status


def harvest_job(job: ContainerJob) -> ContainerExecution | None:
    """Observe the job (its step records a finished attempt and removes the container), return the attempt."""
    observe_job(job)
    execution = job.latest_execution
    if execution is not None and not execution.cleaned_up and job.is_terminal_status:
        # Finished earlier, but its container could not be removed then: try again now.
        get_reconciler().reconcile(job.pk)
        execution.refresh_from_db()
    return execution
