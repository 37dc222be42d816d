"""The one call layer of the real backends: error translation, bounded retries, counters.

Every request a backend sends to its service goes through ``Calls.run``:

* the backend's ``translate`` hook turns whatever the SDK raised into our exception tree
  (``executors.exceptions``), so nothing else ever leaves an executor;
* transient errors (``ExecutorError.transient``) are tried again, at most ``attempts`` times in
  all and, when ``max_seconds`` is set, for no longer than that, waiting ``backoff_seconds``
  between tries (``QuotaExceeded`` waits ``QUOTA_BACKOFF_FACTOR`` times longer: the service
  asked us to slow down). ``HostMisconfigured`` is transient for the reconciler (jobs wait) but
  never retried here: the same credentials will be refused again;
* each verb's calls, retries and errors are counted (``CallCounter``); ``Executor.counters()``
  returns the snapshot, which is what monitoring reads.

Counting rules: ``calls`` counts requests sent (every try, retries included); ``retries``
counts the tries repeated after a transient error; ``errors`` counts the tries that failed,
except ``NotFound`` and ``Conflict``, which are answers the verbs expect ("absent is fine",
"adopt the container an earlier launch made"). A verb that failed for good after retries
therefore shows ``errors == retries + 1`` for that call.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TypeVar

import tenacity

from executors.backoff import backoff_seconds
from executors.exceptions import (
    Conflict,
    ExecutorError,
    HostMisconfigured,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from executors.types import CallCounts

T = TypeVar("T")

#: Quota errors back off this many times longer than other transient errors.
QUOTA_BACKOFF_FACTOR = 4.0
#: First and longest pause of ``Calls.wait_until`` (seconds); the pause doubles in between.
POLL_FIRST_PAUSE = 0.05
POLL_LONGEST_PAUSE = 2.0


class CallCounter:
    """Calls, retries and errors per verb, safe to update from many threads.

    ``verbs`` are reported from the start, with zeros, so a reader sees the same keys before and
    after the first call; a verb not announced appears once it is counted.
    """

    def __init__(self, verbs: Iterable[str] = ()) -> None:
        self._verbs = tuple(verbs)
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()

    def call(self, verb: str) -> None:
        with self._lock:
            self._calls[verb] += 1

    def retry(self, verb: str) -> None:
        with self._lock:
            self._retries[verb] += 1

    def error(self, verb: str) -> None:
        with self._lock:
            self._errors[verb] += 1

    def snapshot(self) -> dict[str, CallCounts]:
        """verb -> its counts so far; a new dict of frozen values each time."""
        with self._lock:
            verbs = set(self._verbs) | set(self._calls) | set(self._retries) | set(self._errors)
            return {
                verb: CallCounts(self._calls[verb], self._retries[verb], self._errors[verb])
                for verb in sorted(verbs)
            }


def retryable(error: ExecutorError) -> bool:
    """Worth another try at once: transient, and not a host the service refuses to serve."""
    return error.transient and not isinstance(error, HostMisconfigured)


def counts_as_error(error: ExecutorError) -> bool:
    return not isinstance(error, NotFound | Conflict)


_RETRY_IF = tenacity.retry_if_exception(lambda e: isinstance(e, ExecutorError) and retryable(e))


class Calls:
    """Runs, translates, retries and counts the requests of one executor."""

    def __init__(
        self,
        translate: Callable[[BaseException], ExecutorError],
        *,
        attempts: int,
        backoff: float,
        backoff_max: float,
        max_seconds: float | None = None,
        on_retry: Callable[[str, int, ExecutorError], None] | None = None,
        verbs: Iterable[str] = (),
    ) -> None:
        self.translate = translate
        #: Tries of one call in all (1: never retried).
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_seconds = max_seconds
        self.on_retry = on_retry
        self.counter = CallCounter(verbs)
        #: Injectable for tests.
        self.sleep: Callable[[float], None] = time.sleep
        self._stop_for: tuple[int, float | None] | None = None
        self._stop_cached: tenacity.stop.stop_base = tenacity.stop_never

    def run(
        self,
        verb: str,
        fn: Callable[[], T],
        *,
        retry: bool = True,
        translate: Callable[[BaseException], ExecutorError] | None = None,
        hide_cause: bool = False,
    ) -> T:
        """``fn()``, counted under ``verb``, its errors translated and transient ones retried if ``retry``.

        ``translate`` replaces the layer's hook for this call (e.g. to scrub values from the
        message). With ``hide_cause`` the SDK's exception is not chained to ours, for calls whose
        SDK errors may quote secrets.
        """
        mapper = translate or self.translate

        def attempt() -> T:
            self.counter.call(verb)
            try:
                return fn()
            except Exception as exc:
                error = exc if isinstance(exc, ExecutorError) else mapper(exc)
                cause: BaseException | None = None if (hide_cause or error is exc) else exc
            if counts_as_error(error):
                self.counter.error(verb)
            # Raised outside the handler: with ``hide_cause`` nothing of the SDK's exception
            # travels with ours, not even as its context.
            raise error from cause

        if not retry or self.attempts <= 1:
            return attempt()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.counter.retry(verb)
            error = state.outcome.exception() if state.outcome is not None else None
            if self.on_retry is not None and isinstance(error, ExecutorError):
                self.on_retry(verb, state.attempt_number, error)

        retrying = tenacity.Retrying(
            stop=self._stop(),
            wait=self._wait,
            retry=_RETRY_IF,
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(attempt)

    def _stop(self) -> tenacity.stop.stop_base:
        """When to give up, rebuilt only when ``attempts`` or ``max_seconds`` changed."""
        key = (self.attempts, self.max_seconds)
        if self._stop_for != key:
            stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(self.attempts)
            if self.max_seconds is not None:
                stop = stop | tenacity.stop_after_delay(self.max_seconds)
            self._stop_cached, self._stop_for = stop, key
        return self._stop_cached

    def _sleep(self, seconds: float) -> None:
        self.sleep(seconds)  # looked up at each pause, so tests may replace ``sleep``

    def delay(self, attempt: int, error: BaseException | None) -> float:
        """The pause after the ``attempt``-th failed try (1 for the first)."""
        factor = QUOTA_BACKOFF_FACTOR if isinstance(error, QuotaExceeded) else 1.0
        return backoff_seconds(None, attempt, self.backoff * factor, self.backoff_max * factor)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        return self.delay(state.attempt_number, error)

    def pause(self, verb: str, attempt: int, error: ExecutorError) -> None:
        """Count a retry the caller makes itself (outside ``run``) and wait before it."""
        self.counter.retry(verb)
        self.sleep(self.delay(attempt, error))

    def wait_until(self, poll: Callable[[], T | None], timeout: float, failure: str) -> T:
        """Call ``poll`` with doubling pauses until it returns a value; ``Unavailable(failure)`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        tries = 0
        while True:
            value = poll()
            if value is not None:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(failure)
            tries += 1
            pause = backoff_seconds(None, tries, POLL_FIRST_PAUSE, POLL_LONGEST_PAUSE, jitter=0.0)
            self.sleep(min(pause, remaining))
