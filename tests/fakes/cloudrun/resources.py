"""Jobs, Executions, Tasks and Operations of the fake, and their JSON as the v2 API returns it.

Each behaviour cites the proto field or page it follows (proto docs are those shipped in
``google/cloud/run_v2/types``; pages are on https://cloud.google.com/run/docs). Where the
documentation is silent (exact message wording, ``Status`` codes) the fake picks a form and
the executor must not depend on it: it reads exit codes from ``TaskAttemptResult`` only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.cloudrun.wire import RPC_CODES, ts

#: The memory-limit message Cloud Run's platform writes (configuring/jobs/memory-limits).
OOM_MESSAGE = (
    "Memory limit of {limit} exceeded with {used} used. Consider increasing the memory limit, "
    "see https://cloud.google.com/run/docs/configuring/memory-limits"
)
#: TaskTemplate.timeout: "the system will actively try to mark it failed and kill associated containers".
TIMEOUT_MESSAGE = "The configured timeout was reached."
EXIT_MESSAGE = "The container exited with an error."
SIGKILL, SIGTERM = 9, 15


@dataclass
class Execution:
    """One execution; its ``task_count`` tasks all follow the same behaviour."""

    name: str
    job_id: str
    project: str
    location: str
    created: float
    #: provisioning time before the tasks start (not charged to the task's timeout)
    start_delay: float
    #: None = never ends by itself
    duration: float | None
    exit_code: int
    timeout: float
    task_count: int
    labels: dict[str, str]
    annotations: dict[str, str]
    template: dict[str, Any]
    oom: bool = False
    crash: bool = False
    memory: str = "512Mi"
    #: "plain": condition messages quote no exit code; "quoted": they quote ``exitCode`` as the
    #: field holds it, so a killed task reads "exit code: 0" (the misleading form seen in the wild)
    message_style: str = "plain"
    #: when ListExecutions/ListJobs first show it (lists lag behind writes)
    listed_at: float = 0.0
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    cancelled_at: float | None = None

    @property
    def execution_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    def phase(self, now: float) -> tuple[str, float | None, float | None]:
        """(outcome or pending/running, task start or None, end or None) at ``now``."""
        start = self.created + self.start_delay
        natural = float("inf") if self.duration is None else start + self.duration
        if self.oom:
            outcome = "oom"
        elif self.crash:
            outcome = "crashed"
        else:
            outcome = "succeeded" if self.exit_code == 0 else "failed"
        end = natural
        # TaskTemplate.timeout: "Max allowed time duration the Task may be active", from its start.
        if start + self.timeout < end:
            end, outcome = start + self.timeout, "timeout"
        if self.cancelled_at is not None and self.cancelled_at < end:
            end, outcome = self.cancelled_at, "cancelled"
        started = start if start <= min(now, end) else None
        if now < end:
            return ("running" if started is not None else "pending"), started, None
        return outcome, started, end

    def is_done(self, now: float) -> bool:
        return self.phase(now)[0] not in ("pending", "running")

    def task_name(self, index: int) -> str:
        return f"{self.name}/tasks/{self.execution_id}-task{index}"

    def attempt_result(self, outcome: str) -> dict[str, Any] | None:
        """TaskAttemptResult: ``status`` OK iff it succeeded; at most one of exitCode/termSignal.

        Over JSON a zero ``exitCode`` is omitted, exactly like an unset one.
        """
        if outcome == "succeeded":
            return {"status": {}}
        if outcome == "failed":
            return {
                "status": {"code": RPC_CODES["UNKNOWN"], "message": EXIT_MESSAGE},
                "exitCode": self.exit_code,
            }
        if outcome == "crashed":  # "exit_code ... may be unset if the container was unable to exit cleanly"
            return {"status": {"code": RPC_CODES["UNKNOWN"], "message": "The container was terminated."}}
        if outcome == "oom":  # term_signal: "set to non-zero if the container is terminated by the system"
            message = OOM_MESSAGE.format(limit=self.memory.replace("Mi", " MiB"), used="530 MiB")
            return {
                "status": {"code": RPC_CODES["RESOURCE_EXHAUSTED"], "message": message},
                "termSignal": SIGKILL,
            }
        if outcome == "timeout":
            return {
                "status": {"code": RPC_CODES["DEADLINE_EXCEEDED"], "message": TIMEOUT_MESSAGE},
                "termSignal": SIGKILL,
            }
        return {
            "status": {"code": RPC_CODES["CANCELLED"], "message": "The task was cancelled."},
            "termSignal": SIGTERM,
        }

    def failure_text(self, outcome: str, result: dict[str, Any]) -> str:
        message = result["status"].get("message", "")
        if self.message_style == "quoted":
            message = f"{message} exit code: {result.get('exitCode', 0)}"
        return message

    def task_json(self, index: int, now: float) -> dict[str, Any]:
        """Task (projects.locations.jobs.executions.tasks) at ``now``."""
        phase, start, end = self.phase(now)
        body: dict[str, Any] = {
            "name": self.task_name(index),
            "uid": f"{self.uid[:24]}{index:012d}",
            "job": f"projects/{self.project}/locations/{self.location}/jobs/{self.job_id}",
            "execution": self.name,
            "index": index,
            "retried": 0,
            "maxRetries": int(self.template.get("maxRetries", 0)),
            "timeout": self.template.get("timeout", "600s"),
            "containers": self.template.get("containers", []),
            "createTime": ts(self.created),
            "reconciling": phase in ("pending", "running"),
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
        }
        if start is not None:
            body["startTime"] = body["scheduledTime"] = ts(start)
        conditions: list[dict[str, Any]] = []
        if phase in ("pending", "running"):
            conditions.append(
                {
                    "type": "Completed",
                    "state": "CONDITION_RECONCILING",
                    "lastTransitionTime": ts(start or self.created),
                }
            )
        elif phase == "cancelled" and start is None:
            conditions.append(
                {"type": "Completed", "state": "CONDITION_FAILED", "message": "The task was cancelled."}
            )
        else:
            result = self.attempt_result(phase)
            assert result is not None and end is not None
            body["lastAttemptResult"] = result
            body["completionTime"] = ts(end)
            completed: dict[str, Any] = {"type": "Completed", "lastTransitionTime": ts(end)}
            if phase == "succeeded":
                completed["state"] = "CONDITION_SUCCEEDED"
            else:
                completed.update(state="CONDITION_FAILED", message=self.failure_text(phase, result))
            conditions.append(completed)
        body["conditions"] = conditions
        return body

    def to_json(self, now: float) -> dict[str, Any]:
        """Execution (projects.locations.jobs.executions) at ``now``."""
        phase, start, end = self.phase(now)
        tasks = self.task_count
        transition = ts(end or start or self.created)
        resources = {"type": "ResourcesAvailable", "lastTransitionTime": transition}
        started_cond = {"type": "Started", "lastTransitionTime": transition}
        completed: dict[str, Any] = {"type": "Completed", "lastTransitionTime": transition}
        counts: dict[str, int] = {}
        if phase == "pending":
            resources["state"] = "CONDITION_RECONCILING"
            started_cond["state"] = completed["state"] = "CONDITION_PENDING"
        elif phase == "running":
            resources["state"] = started_cond["state"] = "CONDITION_SUCCEEDED"
            completed["state"] = "CONDITION_RECONCILING"
            counts["runningCount"] = tasks
        else:
            resources["state"] = "CONDITION_SUCCEEDED"
            started_cond["state"] = "CONDITION_SUCCEEDED" if start is not None else "CONDITION_FAILED"
            if phase == "succeeded":
                completed.update(
                    state="CONDITION_SUCCEEDED",
                    message=f"Execution completed successfully in {(end or now) - (start or self.created):.2f}s.",
                )
                counts["succeededCount"] = tasks
            elif phase == "cancelled":
                completed.update(
                    state="CONDITION_FAILED",
                    severity="INFO",
                    executionReason="CANCELLED",
                    message="The execution was cancelled.",
                )
                counts["cancelledCount"] = tasks
            else:
                result = self.attempt_result(phase) or {"status": {}}
                completed.update(
                    state="CONDITION_FAILED",
                    severity="ERROR",
                    message=f"Task {self.task_name(0).rsplit('/', 1)[-1]} failed with message: {self.failure_text(phase, result)}",
                )
                if phase == "failed":
                    # ExecutionReason.NON_ZERO_EXIT_CODE: "the user container exiting with a non-zero exit code".
                    completed["executionReason"] = "NON_ZERO_EXIT_CODE"
                counts["failedCount"] = tasks
        body: dict[str, Any] = {
            "name": self.name,
            "uid": self.uid,
            "creator": "fake-cloudrun@example.iam.gserviceaccount.com",
            "generation": "1",
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "createTime": ts(self.created),
            "updateTime": transition,
            "launchStage": "GA",
            "job": self.job_id,
            "parallelism": tasks,
            "taskCount": tasks,
            "template": self.template,
            "reconciling": phase in ("pending", "running"),
            "conditions": [resources, started_cond, completed],
            "observedGeneration": "1",
            "logUri": (
                f"https://console.cloud.google.com/logs/viewer?project={self.project}"
                f"&advancedFilter=resource.type%3D%22cloud_run_job%22%0Aresource.labels.job_name%3D%22"
                f"{self.job_id}%22%0Alabels.%22run.googleapis.com/execution_name%22%3D%22{self.execution_id}%22"
            ),
            "etag": f'"{self.uid[:8]}-{phase}"',
            **counts,
        }
        # Execution.start_time: "Represents time when the execution started to run" (after provisioning).
        if start is not None:
            body["startTime"] = ts(start)
        if end is not None:
            body["completionTime"] = ts(end)
        return body

    def completion_status(self, now: float) -> str:
        """ExecutionReference.CompletionStatus."""
        return {
            "pending": "EXECUTION_PENDING",
            "running": "EXECUTION_RUNNING",
            "succeeded": "EXECUTION_SUCCEEDED",
            "cancelled": "EXECUTION_CANCELLED",
        }.get(self.phase(now)[0], "EXECUTION_FAILED")


@dataclass
class Job:
    name: str
    job_id: str
    body: dict[str, Any]
    created: float
    #: when the CreateJob operation is done and the job stops reconciling
    ready_at: float
    #: when ListJobs first shows it
    listed_at: float
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    executions: list[str] = field(default_factory=list)


@dataclass
class Operation:
    name: str
    kind: str  # create | run | delete_job | cancel | delete_execution
    target: str
    created: float
    snapshot: dict[str, Any] | None = None
