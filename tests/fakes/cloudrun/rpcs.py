"""The RPCs of the fake Run Admin API v2 (see ``service`` for what each reproduces and why)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from tests.fakes.cloudrun import logging_api
from tests.fakes.cloudrun.resources import Execution, Job
from tests.fakes.cloudrun.wire import ApiError, duration_s, ts


class RpcsMixin:
    """Mixed into ``FakeCloudRun``; every method runs one request under the fake's lock."""

    # Attributes and helpers provided by FakeCloudRun.
    lock: Any
    jobs: dict[str, Job]
    executions: dict[str, Execution]
    operations: dict[str, Any]
    log_entries: list[dict[str, Any]]
    log_queries: list[dict[str, Any]]
    project: str
    location: str
    time_scale: float
    start_delay: float
    default_duration: float
    operation_delay: float
    list_delay: float
    max_jobs: int
    max_running_executions: int
    message_style: str
    _job_name: Any
    _job_json: Any
    _new_operation: Any
    _operation_json: Any
    _validate_job: Any
    _behaviour: Any
    _page: Any
    _write_logs: Any

    def _job(self, params: dict[str, str]) -> Job:
        job = self.jobs.get(self._job_name(params["project"], params["location"], params["job"]))
        if job is None:
            raise ApiError(
                404,
                f"Resource '{params['job']}' of kind 'JOB' in region '{params['location']}' "
                f"in project '{params['project']}' does not exist.",
            )
        return job

    def _rpc_CreateJob(self, params: dict[str, str], query: dict[str, str], job: dict[str, Any]) -> Any:
        job_id = query.get("jobId", "")
        self._validate_job(job_id, job)
        name = self._job_name(params["project"], params["location"], job_id)
        prefix = f"projects/{params['project']}/locations/{params['location']}/jobs/"
        with self.lock:
            if name in self.jobs:
                raise ApiError(409, f"Resource '{job_id}' already exists.", "ALREADY_EXISTS")
            # Quotas: "Maximum number of jobs: 1000 per project and region".
            if sum(n.startswith(prefix) for n in self.jobs) >= self.max_jobs:
                raise ApiError(
                    429,
                    f"Quota exceeded: project {params['project']} may have at most {self.max_jobs} jobs "
                    f"in region {params['location']}.",
                )
            now = time.time()
            body = {k: v for k, v in job.items() if k not in ("name", "uid", "etag")}
            self.jobs[name] = Job(
                name,
                job_id,
                body,
                created=now,
                ready_at=now + self.operation_delay,
                listed_at=now + self.list_delay,
            )
            return self._operation_json(self._new_operation(params, "create", name), now)

    def _rpc_GetJob(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        with self.lock:
            return self._job_json(self._job(params), time.time())

    def _rpc_ListJobs(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        prefix = f"projects/{params['project']}/locations/{params['location']}/jobs/"
        now = time.time()
        with self.lock:
            jobs = [
                self._job_json(j, now)
                for n, j in sorted(self.jobs.items())
                if n.startswith(prefix) and j.listed_at <= now
            ]
        return self._page(jobs, query, "jobs")

    def _rpc_DeleteJob(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            job = self._job(params)
            snapshot = self._job_json(job, now)
            snapshot["deleteTime"] = ts(now)
            for execution in job.executions:
                self.executions.pop(execution, None)
            del self.jobs[job.name]
            return self._operation_json(self._new_operation(params, "delete_job", job.name, snapshot), now)

    def _rpc_RunJob(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            job = self._job(params)
            if now < job.ready_at:
                raise ApiError(400, f"Job '{params['job']}' is not ready yet.", "FAILED_PRECONDITION")
            running = sum(
                not e.is_done(now)
                for e in self.executions.values()
                if (e.project, e.location) == (params["project"], params["location"])
            )
            # Quotas: "Maximum number of running job executions: 1000 per project and region".
            if running >= self.max_running_executions:
                raise ApiError(
                    429,
                    f"Quota exceeded: at most {self.max_running_executions} running executions "
                    f"in region {params['location']}.",
                )
            template = job.body.get("template") or {}
            task = template.get("template") or {}
            container = task["containers"][0]
            behaviour = self._behaviour(container)
            scale = self.time_scale
            start = self.start_delay if behaviour.start is None else behaviour.start
            duration = self.default_duration if behaviour.duration is None else behaviour.duration
            suffix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(5))
            execution = Execution(
                name=f"{job.name}/executions/{params['job']}-{suffix}",
                job_id=params["job"],
                project=params["project"],
                location=params["location"],
                created=now,
                start_delay=start * scale,
                duration=None if behaviour.hang else duration * scale,
                exit_code=behaviour.exit_code,
                timeout=duration_s(task.get("timeout", "600s")) * scale,
                task_count=int(template.get("taskCount", 1)),
                labels=dict(template.get("labels") or {}),
                annotations=dict(template.get("annotations") or {}),
                template=task,
                oom=behaviour.oom,
                crash=behaviour.crash,
                memory=((container.get("resources") or {}).get("limits") or {}).get("memory", "512Mi"),
                message_style=self.message_style,
                listed_at=now + self.list_delay,
            )
            self.executions[execution.name] = execution
            job.executions.append(execution.name)
            self._write_logs(execution, behaviour, job.body)
            return self._operation_json(self._new_operation(params, "run", execution.name), now)

    def _executions_in(self, params: dict[str, str], now: float) -> list[Execution]:
        job_id = params["job"]
        if job_id != "-":
            self._job(params)
        prefix = f"projects/{params['project']}/locations/{params['location']}/jobs/"
        found = [
            e
            for n, e in self.executions.items()
            if n.startswith(prefix) and (job_id == "-" or e.job_id == job_id) and e.listed_at <= now
        ]
        return sorted(found, key=lambda e: (-e.created, e.name))

    def _rpc_ListExecutions(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            items = [e.to_json(now) for e in self._executions_in(params, now)]
        return self._page(items, query, "executions")

    def _execution(self, params: dict[str, str]) -> Execution:
        name = f"{self._job_name(params['project'], params['location'], params['job'])}/executions/{params['execution']}"
        execution = self.executions.get(name)
        if execution is None:
            raise ApiError(404, f"Resource '{params['execution']}' of kind 'EXECUTION' does not exist.")
        return execution

    def _rpc_GetExecution(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        with self.lock:
            return self._execution(params).to_json(time.time())

    def _rpc_ListTasks(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            execution = self._execution(params)
            tasks = [execution.task_json(i, now) for i in range(execution.task_count)]
        return self._page(tasks, query, "tasks")

    def _rpc_GetTask(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            execution = self._execution(params)
            for index in range(execution.task_count):
                if execution.task_name(index).endswith(f"/tasks/{params['task']}"):
                    return execution.task_json(index, now)
        raise ApiError(404, f"Resource '{params['task']}' of kind 'TASK' does not exist.")

    def _rpc_CancelExecution(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            execution = self._execution(params)
            if execution.is_done(now):
                raise ApiError(
                    400, f"Execution '{params['execution']}' has already completed.", "FAILED_PRECONDITION"
                )
            execution.cancelled_at = now
            return self._operation_json(self._new_operation(params, "cancel", execution.name), now)

    def _rpc_DeleteExecution(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            execution = self._execution(params)
            snapshot = execution.to_json(now)
            snapshot["deleteTime"] = ts(now)
            del self.executions[execution.name]
            return self._operation_json(
                self._new_operation(params, "delete_execution", execution.name, snapshot), now
            )

    def _rpc_GetOperation(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        name = f"projects/{params['project']}/locations/{params['location']}/operations/{params['operation']}"
        with self.lock:
            op = self.operations.get(name)
            if op is None:
                raise ApiError(404, f"Operation '{name}' not found.")
            return self._operation_json(op, time.time())

    def _rpc_ListLogEntries(self, params: dict[str, str], query: dict[str, str], body: Any) -> Any:
        with self.lock:
            entries = list(self.log_entries)
            self.log_queries.append(dict(body))
        return logging_api.list_entries(entries, body, ts(time.time()))
