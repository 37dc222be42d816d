"""Docker's wire forms, read and written: states, times, inspect and list output, log frames.

Pure functions of what the daemon sent (no client, no I/O beyond the response body handed in),
so each is tested on recorded payloads without a daemon.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from executors.base import BoundedTail
from executors.types import ContainerState, Observed, Usage

MIB = 1024 * 1024

#: Docker's State.Status -> our state. "paused"/"restarting" still occupy the slot; "dead" and
#: "removing" are finished as far as the job is concerned.
_STATES = {
    "created": ContainerState.CREATED,
    "running": ContainerState.RUNNING,
    "paused": ContainerState.RUNNING,
    "restarting": ContainerState.RUNNING,
    "exited": ContainerState.EXITED,
    "dead": ContainerState.EXITED,
    "removing": ContainerState.EXITED,
}
#: Linux limits on the environment a program starts with (execve(2), "Limits on size of
#: arguments and environment"): one string at most MAX_ARG_STRLEN (32 pages, 128 KiB) with its
#: NUL, and argv plus envp (strings and pointers) at most a quarter of the stack limit, 2 MiB
#: under the default 8 MiB stack.
MAX_ARG_STRLEN = 128 * 1024
MAX_ENVIRONMENT_BYTES = 2 * 1024 * 1024

_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")
_EXITED_STATUS = re.compile(r"^Exited \((-?\d+)\)")
_FRAME_HEADER = struct.Struct(">BxxxL")
_STREAM_NAMES = {0: "stdout", 1: "stdout", 2: "stderr"}


def parse_docker_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 timestamp with nanoseconds -> aware datetime; zero time -> None."""
    if not value or value.startswith("0001-01-01"):
        return None
    match = _DOCKER_TIME.match(value.strip())
    if not match:
        return None
    base, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    parsed = datetime.fromisoformat(base).replace(microsecond=micros)
    if zone in (None, "Z"):
        return parsed.replace(tzinfo=UTC)
    sign = 1 if zone[0] == "+" else -1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    return (parsed - sign * timedelta(hours=hours, minutes=minutes)).replace(tzinfo=UTC)


def nanos_to_param(nanos: int) -> str:
    """Docker's exact ``since``/``until`` form; docker-py would truncate a datetime to seconds."""
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"


def map_state(status: str | None) -> ContainerState:
    """Docker's container status word -> ``ContainerState``."""
    return _STATES.get((status or "").lower(), ContainerState.RUNNING)


def observed_from_inspect(name: str, data: dict[str, Any]) -> Observed:
    """Turn ``inspect_container`` output into an ``Observed``."""
    state_info = data.get("State") or {}
    status = state_info.get("Status") or ("running" if state_info.get("Running") else "exited")
    state = map_state(status)
    exited = state is ContainerState.EXITED
    error = state_info.get("Error") or ""
    if status == "dead" and not error:
        error = "container is dead (Docker could not stop or remove it cleanly)"
    started_at = parse_docker_time(state_info.get("StartedAt"))
    finished_at = parse_docker_time(state_info.get("FinishedAt")) if exited else None
    if started_at and finished_at and finished_at < started_at:
        # Docker stamps StartedAt after the start call returns: a process that exits at once can
        # finish "before" it started. Never report a negative run time.
        finished_at = started_at
    return Observed(
        name=name,
        state=state,
        container_id=data.get("Id"),
        exit_code=int(state_info.get("ExitCode", 0)) if exited else None,
        oom_killed=bool(state_info.get("OOMKilled")),
        started_at=started_at,
        finished_at=finished_at,
        error=error,
        labels=dict((data.get("Config") or {}).get("Labels") or {}),
    )


def observed_from_list(item: dict[str, Any]) -> Observed:
    """Turn one ``containers()`` entry into an ``Observed`` (no times, no OOM: inspect for truth)."""
    names = item.get("Names") or []
    name = names[0].lstrip("/") if names else str(item.get("Id", ""))
    state = map_state(item.get("State"))
    exit_code = None
    if state is ContainerState.EXITED:
        match = _EXITED_STATUS.match(item.get("Status") or "")
        exit_code = int(match.group(1)) if match else None
    return Observed(
        name=name,
        state=state,
        container_id=item.get("Id"),
        exit_code=exit_code,
        labels=dict(item.get("Labels") or {}),
    )


def environment_problems(env: Mapping[str, str]) -> list[str]:
    """Variables no Linux program could start with (execve(2) would fail with E2BIG)."""
    problems = []
    total = 0
    for key, value in env.items():
        size = len(f"{key}={value}".encode("utf-8", "surrogatepass")) + 1
        total += size + 8  # the string, its NUL and its pointer in envp
        if size > MAX_ARG_STRLEN:
            problems.append(
                f"{key}: Linux refuses one environment string (KEY=VALUE) over {MAX_ARG_STRLEN // 1024} KiB"
            )
    if total > MAX_ENVIRONMENT_BYTES:
        problems.append(
            f"the environment is {total // 1024} KiB; Linux starts no program with more than "
            f"{MAX_ENVIRONMENT_BYTES // 1024} KiB of arguments and environment"
        )
    return problems


def usage_from_stats(stats: dict[str, Any]) -> Usage:
    """One ``stats(stream=False)`` answer -> ``Usage``, computed as ``docker stats`` does."""
    memory = stats.get("memory_stats") or {}
    inner = memory.get("stats") or {}
    # cgroup v1 reports page cache as total_inactive_file, v2 as inactive_file (as docker stats does).
    cache = inner.get("total_inactive_file", inner.get("inactive_file", 0)) or 0
    usage = max(0, int(memory.get("usage") or 0) - int(cache))
    limit = int(memory.get("limit") or 0)
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get(
        "total_usage", 0
    )
    system_delta = (cpu.get("system_cpu_usage") or 0) - (pre.get("system_cpu_usage") or 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    percent = 100.0 * cpu_delta / system_delta * online if cpu_delta > 0 and system_delta > 0 else 0.0
    return Usage(memory_bytes=usage, memory_limit_bytes=limit, cpu_percent=round(percent, 2))


class BatchedTail:
    """``BoundedTail`` fed in batches, so many tiny frames cost linear time, not quadratic."""

    def __init__(self, max_bytes: int) -> None:
        self.tail = BoundedTail(max(0, max_bytes))
        self._pending = bytearray()
        self._batch = max(max_bytes, 64 * 1024)

    def feed(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= self._batch:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.tail.feed(bytes(self._pending))
            self._pending.clear()


def iter_frames(blocks: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """Demultiplex Docker's attach/logs stream into ("stdout"|"stderr", payload) pairs.

    Consecutive frames of one stream that arrive in one block are joined, so a log of many
    short lines costs one Python object per block, not per line. A stream without frame
    headers (a TTY container) is passed through as stdout.
    """
    buf = bytearray()
    raw = False
    header = _FRAME_HEADER.size
    for block in blocks:
        if raw:
            if block:
                yield "stdout", bytes(block)
            continue
        buf += block
        size, pos = len(buf), 0
        run_stream, run = "", bytearray()
        view = memoryview(buf)
        try:
            while size - pos >= header:
                stream_id, length = _FRAME_HEADER.unpack_from(buf, pos)
                if stream_id > 2 or buf[pos + 1 : pos + 4] != b"\0\0\0":
                    raw = True
                    if run and run_stream != "stdout":
                        yield run_stream, bytes(run)
                        run = bytearray()
                    run_stream = "stdout"
                    run += view[pos:]
                    pos = size
                    break
                end = pos + header + length
                if end > size:
                    break
                name = _STREAM_NAMES[stream_id]
                if name != run_stream and run:
                    yield run_stream, bytes(run)
                    run = bytearray()
                run_stream = name
                run += view[pos + header : end]
                pos = end
        finally:
            view.release()
        if run:
            yield run_stream, bytes(run)
        del buf[:pos]


def read_blocks(response: requests.Response, live: bool) -> Iterator[bytes]:
    """The body in blocks: as each chunk arrives when ``live``, else in big reads (far cheaper)."""
    if live:
        yield from response.raw.stream(64 * 1024, decode_content=False)
        return
    while True:
        block = response.raw.read(64 * 1024, decode_content=False)
        if not block:
            return
        yield block
