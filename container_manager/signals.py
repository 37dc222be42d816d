"""Django signals sent after every committed job status change, for integrators.

Receivers run after the transaction commits, in the process that made the change (usually
the daemon); a receiver that raises is logged and does not disturb the reconciler.

* ``job_status_changed(job_id, old_status, new_status, reason, attempt, actor)``: every change.
* ``job_launched(job_id, attempt, host)``: a container started for an attempt.
* ``job_finished(job_id, status, reason, exit_code)``: the job reached a terminal status.
* ``job_retry_scheduled(job_id, attempt, retry_at, reason)``: a failed attempt will be retried.
"""

from __future__ import annotations

from django.dispatch import Signal

job_status_changed = Signal()
job_launched = Signal()
job_finished = Signal()
job_retry_scheduled = Signal()
