"""Removing the containers of finished attempts, off the jobs' path.

By the time an attempt is handed over its outcome and output are recorded, so the removal
delays nobody: the daemon's cleaner only notes the attempt and wakes its own work-queue key,
whose run removes every noted container and marks them all cleaned up in one UPDATE. The model
methods (``job.harvest()``) use a cleaner that removes at once. A removal that fails transiently
stays noted for the next run; if the process dies first, ``cleaned_up`` is still false and the
resync hands the attempt over again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from container_manager.models import ContainerExecution, ExecutorHost
from executors.base import Executor
from executors.exceptions import ExecutorError
from reconciler import record
from reconciler.outcome import DONE, Outcome, RequeueAfter

log = structlog.get_logger("reconciler")

#: wait before trying again to remove containers whose removal failed transiently.
RETRY_SECONDS = 5.0


class Cleaner:
    def __init__(
        self, executor_for: Callable[[ExecutorHost], Executor], wake: Callable[[], None] | None = None
    ) -> None:
        self.executor_for = executor_for
        #: called after a submission; None removes at once, in the caller's thread.
        self.wake = wake
        self._lock = threading.Lock()
        self._pending: dict[int, ContainerExecution] = {}

    def submit(self, execution: ContainerExecution) -> None:
        """Note a finished attempt whose container is to be removed."""
        with self._lock:
            if execution.pk in self._pending:
                return
            self._pending[execution.pk] = execution
        if self.wake is None:
            self.run()
        else:
            self.wake()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def run(self) -> Outcome:
        """Remove every noted container; mark the removed ones cleaned up in one write."""
        with self._lock:
            batch, self._pending = self._pending, {}
        removed: list[ContainerExecution] = []
        failed: dict[int, ContainerExecution] = {}
        for execution in batch.values():
            host = execution.executor_host
            if host is not None:
                try:
                    self.executor_for(host).remove(execution.container_name)
                except ExecutorError as exc:
                    if exc.transient:
                        log.warning(
                            "container removal failed; will try again",
                            job_id=execution.job_id,
                            container=execution.container_name,
                            error=str(exc),
                        )
                        failed[execution.pk] = execution
                        continue
                    # A host that cannot be used at all (its configuration is wrong): nothing
                    # more can be done from here; the orphan sweep removes it once it can.
            removed.append(execution)
        record.mark_cleaned([e.pk for e in removed])
        for execution in removed:
            execution.cleaned_up = True
        if failed:
            with self._lock:
                for pk, execution in failed.items():
                    self._pending.setdefault(pk, execution)
            return RequeueAfter(RETRY_SECONDS, "container removal failed")
        return DONE
