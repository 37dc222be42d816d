"""Docker's event stream as a sequence of hints, robust to drops, silence and lost events.

The label-filtered ``/events`` stream is read in short ``until`` windows, each a complete HTTP
request with a socket read timeout, so a silent or half-open stream is noticed, ``stop`` is
honoured within a window, and every window resumes exactly where the last one ended (``since``
as "seconds.nanoseconds", on the daemon's clock). Each window replays from the last event
seen (the *anchor*); events already reported are dropped (``seen``). When the replay does not
begin with the anchor, events fell out of the daemon's 256-event buffer in between, and a
``RESYNC`` hint tells the consumer to re-list; so does any reconnection.

``EventStream`` is one watch: its ``_Cursor`` is the only state carried from window to window.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import docker
import requests
from docker.types.daemon import CancellableStream
from docker.utils import convert_filters

from executors.backoff import backoff_seconds
from executors.docker.errors import check, translate
from executors.docker.wire import nanos_to_param, parse_docker_time
from executors.exceptions import ExecutorError
from executors.types import (
    LABEL_ATTEMPT,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_MANAGED,
    ContainerState,
    EventKind,
    ExecutorEvent,
    Observed,
)

if TYPE_CHECKING:
    from executors.docker.executor import DockerExecutor

log = logging.getLogger(__name__)

EVENT_KINDS = {
    "start": EventKind.STARTED,
    "die": EventKind.DIED,
    "oom": EventKind.OOM,
    "destroy": EventKind.DESTROYED,
}
#: The counter verb of the event stream: calls are window requests, retries reconnections,
#: errors failed connections and broken or cut-short streams.
VERB = "events"
#: Reconnect pauses: 50 ms doubling to 5 s, with jitter.
RECONNECT_BASE_SECONDS = 0.05
RECONNECT_MAX_SECONDS = 5.0
#: How many event keys (and OOM'd containers) are remembered to drop repeats.
SEEN_SIZE = 4096
OOM_SEEN_SIZE = 1024


def _int_label(labels: dict[str, Any], key: str) -> int | None:
    try:
        return int(labels[key])
    except (KeyError, TypeError, ValueError):
        return None


def _remember(cache: OrderedDict[Any, None], key: Any, size: int) -> None:
    cache[key] = None
    if len(cache) > size:
        cache.popitem(last=False)


def event_at(raw: dict[str, Any]) -> datetime:
    nanos = raw.get("timeNano")
    if isinstance(nanos, int):
        return datetime.fromtimestamp(nanos / 1e9, UTC)
    return datetime.fromtimestamp(float(raw.get("time") or 0), UTC)


def exit_from_event(raw: dict[str, Any]) -> Observed | None:
    """What inspection would say of a container a 'die' event reports (None without an exit code)."""
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    name = str(attributes.get("name") or "")
    try:
        code = int(attributes["exitCode"])
    except (KeyError, TypeError, ValueError):
        return None  # an event without the exit code: inspection will tell
    if not name:
        return None
    return Observed(
        name=name,
        state=ContainerState.EXITED,
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        exit_code=code,
        finished_at=event_at(raw),
        labels={k: str(v) for k, v in attributes.items() if k.startswith("container_manager.")},
    )


@dataclass
class _Cursor:
    """Where the next window starts and what has been reported: all a watch carries between windows."""

    #: Start of the next window, on the daemon's clock.
    since_ns: int | None = None
    #: The last event seen; the next window's replay should begin with it.
    anchor: tuple[Any, ...] | None = None
    #: Daemon clock minus local clock, seconds; None until measured (again, after a failure).
    offset: float | None = None
    #: The connection failed since the last good window: the next one starts with a RESYNC.
    dropped: bool = False
    #: Failures in a row, for the reconnect backoff.
    failures: int = 0
    seen: OrderedDict[tuple[Any, ...], None] = field(default_factory=OrderedDict)
    #: Containers whose 'oom' was reported (Docker may send several); their 'die' is not cached.
    oom_reported: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def failed(self) -> None:
        self.failures += 1
        self.dropped, self.offset = True, None


@dataclass
class _Window:
    """One ``/events`` request and what its reading found."""

    response: requests.Response
    until_ns: int
    #: ``time.monotonic()`` when the daemon should end the window.
    deadline: float
    #: This window began with a RESYNC (after a reconnection): lost events need no other one.
    resynced: bool
    saw_anchor: bool
    #: An event not seen before arrived.
    fresh: bool = False
    #: The window was read to its end without an error.
    clean: bool = False


class EventStream:
    """One watch of one instance's containers on one executor's daemon; iterate it for hints."""

    def __init__(self, executor: DockerExecutor, instance: str, stop: threading.Event) -> None:
        self.executor = executor
        self.stop = stop
        self.filters = convert_filters(
            {
                "label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"],
                "type": ["container"],
                "event": list(EVENT_KINDS),
            }
        )
        self.cursor = _Cursor()

    def __iter__(self) -> Iterator[ExecutorEvent]:
        cursor = self.cursor
        while not self.stop.is_set():
            window = self._open()
            if window is None:
                self._pause()
                continue
            yield from self._read(window)
            if self.stop.is_set():
                return
            if not window.clean:
                self._pause()
                continue
            if time.monotonic() < window.deadline - 0.25:
                # The daemon ended the window early: our idea of its clock is off, or something
                # between us closed the stream. Measure again and treat it as a reconnect.
                self._failed("stream ended early, reconnecting")
                self._pause()
                continue
            cursor.failures = 0
            if not window.saw_anchor and not window.resynced:
                # The last event of the previous window was not replayed: more than the daemon's
                # buffer happened in between, ours possibly among it.
                yield self._lost()
            if not window.fresh:
                # A quiet window: resume a little before its end rather than from an old anchor
                # that busy daemons push out of their buffer (``seen`` absorbs the overlap).
                cursor.anchor = None
                overlap = int(self.executor.events_overlap * 1e9)
                cursor.since_ns = max(cursor.since_ns or 0, window.until_ns - overlap)

    def _open(self) -> _Window | None:
        """Request the next window (None after a failure, counted and logged)."""
        executor, cursor = self.executor, self.cursor
        window_seconds = executor.events_window
        read_timeout = executor.events_read_timeout or window_seconds + 5.0
        executor.calls.counter.call(VERB)
        try:
            api = executor._client()
            if cursor.offset is None:
                cursor.offset = self._clock_offset(api)
            now_ns = int((time.time() + cursor.offset) * 1e9)
            if cursor.since_ns is None:
                cursor.since_ns = now_ns
            until_ns = now_ns + int(window_seconds * 1e9)
            deadline = time.monotonic() + window_seconds
            response = api.get(
                executor._url(api, "/events"),
                params={
                    "since": nanos_to_param(cursor.since_ns),
                    "until": nanos_to_param(until_ns),
                    "filters": self.filters,
                },
                stream=True,
                timeout=(executor.api_timeout, read_timeout),
            )
            check(response)
        except Exception as exc:
            self._failed(f"cannot connect: {self._explain(exc)}")
            return None
        return _Window(
            response, until_ns, deadline, resynced=cursor.dropped, saw_anchor=cursor.anchor is None
        )

    def _read(self, window: _Window) -> Iterator[ExecutorEvent]:
        """The window's new hints, RESYNC first after a reconnection or when events were lost."""
        executor, cursor = self.executor, self.cursor
        stream = CancellableStream(iter(()), window.response)
        executor._track_stream(stream, open=True)
        if cursor.dropped:
            cursor.dropped = False
            executor.calls.counter.retry(VERB)
            log.info("docker events on %s: reconnected, asking for a resync", executor.name)
            yield ExecutorEvent(kind=EventKind.RESYNC)
        try:
            for raw in self._raw_events(window.response):
                if self.stop.is_set():
                    return
                key = (raw.get("timeNano"), raw.get("id"), raw.get("Action") or raw.get("status"))
                if not window.saw_anchor:
                    window.saw_anchor = True
                    if key != cursor.anchor and not window.resynced:
                        # The replay did not start with the last event we saw: some fell out of
                        # the daemon's buffer in between.
                        yield self._lost()
                if key == cursor.anchor or key in cursor.seen:
                    continue
                _remember(cursor.seen, key, SEEN_SIZE)
                cursor.anchor, window.fresh = key, True
                if isinstance(raw.get("timeNano"), int):
                    cursor.since_ns = raw["timeNano"]
                event = self._hint(raw)
                if event is not None:
                    yield event
            window.clean = True
        except Exception as exc:
            if not self.stop.is_set():
                self._failed(f"stream broke: {self._explain(exc)}")
            else:
                cursor.failed()
        finally:
            executor._track_stream(stream, open=False)
            window.response.close()

    def _hint(self, raw: dict[str, Any]) -> ExecutorEvent | None:
        """The hint of one raw event (None for a repeated 'oom'); a 'die' also primes ``inspect``."""
        kind = EVENT_KINDS.get(raw.get("Action") or raw.get("status") or "")
        if kind is None:
            return None
        actor = raw.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        container_id = str(actor.get("ID") or raw.get("id") or "")
        oom_reported = self.cursor.oom_reported
        if kind is EventKind.OOM:
            if container_id in oom_reported:
                return None
            _remember(oom_reported, container_id, OOM_SEEN_SIZE)
        if kind is EventKind.DIED and container_id not in oom_reported:
            exited = exit_from_event(raw)
            if exited is not None:
                self.executor._remember_exit(exited)
        return ExecutorEvent(
            kind=kind,
            name=str(attributes.get("name") or ""),
            job_id=_int_label(attributes, LABEL_JOB),
            attempt=_int_label(attributes, LABEL_ATTEMPT),
            at=event_at(raw),
        )

    def _lost(self) -> ExecutorEvent:
        log.warning("docker events on %s: events were lost, asking for a resync", self.executor.name)
        return ExecutorEvent(kind=EventKind.RESYNC)

    def _failed(self, why: str) -> None:
        self.cursor.failed()
        self.executor.calls.counter.error(VERB)
        log.warning("docker events on %s: %s", self.executor.name, why)

    def _pause(self) -> None:
        delay = backoff_seconds(None, self.cursor.failures, RECONNECT_BASE_SECONDS, RECONNECT_MAX_SECONDS)
        self.stop.wait(delay)

    def _explain(self, exc: BaseException) -> ExecutorError:
        return translate(exc, "", self.executor.base_url, self.executor._hidden)

    @staticmethod
    def _raw_events(response: requests.Response) -> Iterator[dict[str, Any]]:
        pending = b""
        for block in response.raw.stream(64 * 1024, decode_content=False):
            pending += block
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
        if pending.strip():
            yield json.loads(pending)

    @staticmethod
    def _clock_offset(api: docker.APIClient) -> float:
        """Daemon clock minus local clock, from ``/info``'s SystemTime (0 when it has none)."""
        before = time.time()
        info = api.info()
        after = time.time()
        server = parse_docker_time(str(info.get("SystemTime") or ""))
        if server is None:
            return 0.0
        return server.timestamp() - (before + after) / 2
