"""The newest bytes of one execution's stdout and stderr, from Cloud Logging.

Only the container's own output is read: Cloud Run writes what a job's container prints to
the logs ``run.googleapis.com/stdout`` and ``run.googleapis.com/stderr``, platform messages
to ``run.googleapis.com/varlog/system`` and API activity to ``cloudaudit.googleapis.com/...``
(https://cloud.google.com/run/docs/logging: container logs, system logs in ``varlog/system``;
an audit record of CreateJob holds the job spec, environment values included). The filter
names the two log names, and any entry of another log is dropped anyway, so an audit
record never lands in a stored tail.

Entries are read newest first (``order_by`` descending) and reading stops once both streams
hold ``max_bytes``, so memory stays bounded whatever the log size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from executors.base import BoundedTail
from executors.types import LogTail

STREAMS = ("stdout", "stderr")
#: The counter verb of a log read (see ``Executor.counters``).
VERB = "list_log_entries"
#: Most entries read for one tail, whatever their size.
MAX_ENTRIES = 20000
PAGE_SIZE = 1000


def log_name(project: str, stream: str) -> str:
    """The full log name of a Cloud Run container stream (the ``/`` is URL-encoded in log names)."""
    return f"projects/{project}/logs/run.googleapis.com%2F{stream}"


def log_filter(project: str, job_id: str, execution_id: str, since: datetime | None) -> str:
    names = " OR ".join(f'logName="{log_name(project, s)}"' for s in STREAMS)
    parts = [
        'resource.type="cloud_run_job"',
        f'resource.labels.job_name="{job_id}"',
        f'labels."run.googleapis.com/execution_name"="{execution_id}"',
        f"({names})",
    ]
    if since is not None:
        # An explicit bound: the client library otherwise adds "the last 24 hours" by itself.
        parts.append(f'timestamp>="{since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}"')
    return " AND ".join(parts)


def make_client(project: str, credentials: Any, endpoint: str | None, use_grpc: bool) -> Any:
    """A ``google.cloud.logging`` client, or None when the optional package is missing."""
    try:
        from google.cloud import logging as cloud_logging  # type: ignore[attr-defined]
    except ImportError:
        return None
    options = {"api_endpoint": endpoint} if endpoint else None
    return cloud_logging.Client(
        project=project, credentials=credentials, client_options=options, _use_grpc=use_grpc
    )


def read_tail(
    client: Any,
    project: str,
    job_id: str,
    execution_id: str,
    since: datetime | None,
    max_bytes: int,
    count: Callable[[str], None],
) -> LogTail:
    """The last ``max_bytes`` of each stream; raises what the client raises."""
    from google.cloud import logging as cloud_logging  # type: ignore[attr-defined]

    wanted = {log_name(project, s): s for s in STREAMS}
    chunks: dict[str, list[bytes]] = {s: [] for s in STREAMS}
    sizes = dict.fromkeys(STREAMS, 0)
    truncated = dict.fromkeys(STREAMS, False)
    count(VERB)
    entries = client.list_entries(
        resource_names=[f"projects/{project}"],
        filter_=log_filter(project, job_id, execution_id, since),
        order_by=cloud_logging.DESCENDING,
        page_size=PAGE_SIZE,
        max_results=MAX_ENTRIES,
    )
    for entry in entries:
        stream = wanted.get(str(getattr(entry, "log_name", "")))
        if stream is None:
            continue  # never keep another log's entry (audit records hold env values)
        if sizes[stream] >= max_bytes:
            truncated[stream] = True
            if all(sizes[s] >= max_bytes for s in STREAMS):
                break
            continue
        payload = entry.payload
        text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
        data = (text if text.endswith("\n") else text + "\n").encode()
        chunks[stream].append(data)
        sizes[stream] += len(data)
    tails = {s: BoundedTail(max_bytes) for s in STREAMS}
    for stream in STREAMS:
        for chunk in reversed(chunks[stream]):
            tails[stream].feed(chunk)
    out, err = tails["stdout"], tails["stderr"]
    return LogTail(
        out.text(),
        err.text(),
        out.truncated or truncated["stdout"],
        err.truncated or truncated["stderr"],
    )
