"""The one path every Google call takes: timeout, counting, error mapping, bounded retries.

Over the REST transport the api_core exception class follows the HTTP status (409 is
``Conflict``, 400 ``BadRequest``, 403 ``Forbidden``, 429 ``TooManyRequests``), so errors are
mapped on those base classes, reading the RPC status from the error body where it matters.

* 403 (``PERMISSION_DENIED``: the host's identity lacks a permission such as
  ``iam.serviceAccounts.actAs`` on the job's service account, or the Cloud Run Admin API is
  disabled) and 401 are the host's problem, not the job's: ``HostMisconfigured``, which is
  transient for the reconciler (jobs wait, the host is marked unhealthy) and not retried here.
* 429 (``RESOURCE_EXHAUSTED``: API rate quotas, and limits such as 1000 jobs or 1000 running
  executions per region, https://cloud.google.com/run/quotas) is ``QuotaExceeded``: transient,
  backed off ``QUOTA_BACKOFF_FACTOR`` times longer.
* A call that got no answer (client timeout, connection dropped, 504) is ``NoAnswer``: the
  server may have acted on it, which matters for requests that are not idempotent (RunJob).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity
from google.api_core import exceptions as gexc

from executors.exceptions import (
    Conflict,
    ExecutorError,
    HostMisconfigured,
    InvalidSpec,
    NotFound,
    QuotaExceeded,
    Unavailable,
)

T = TypeVar("T")

#: Quota errors back off this many times longer than other transient errors.
QUOTA_BACKOFF_FACTOR = 4.0

#: gRPC status code (as carried in a long-running operation's error) -> api_core exception.
GRPC_CODE_EXCEPTIONS: dict[int, type[gexc.GoogleAPICallError]] = {
    1: gexc.Cancelled,
    2: gexc.Unknown,
    3: gexc.InvalidArgument,
    4: gexc.DeadlineExceeded,
    5: gexc.NotFound,
    6: gexc.AlreadyExists,
    7: gexc.PermissionDenied,
    8: gexc.ResourceExhausted,
    9: gexc.FailedPrecondition,
    10: gexc.Aborted,
    11: gexc.OutOfRange,
    12: gexc.MethodNotImplemented,
    13: gexc.InternalServerError,
    14: gexc.ServiceUnavailable,
    15: gexc.DataLoss,
    16: gexc.Unauthenticated,
}


class NoAnswer(Unavailable):
    """The call got no answer: the server may or may not have acted on it."""


def rpc_status(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    try:
        payload = response.json() if response is not None else {}
    except Exception:
        return ""
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    return str(error.get("status", "")) if isinstance(error, dict) else ""


def _is_transport_error(exc: BaseException) -> bool:
    import requests
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, auth_exceptions.RefreshError):
        return False
    return isinstance(exc, requests.exceptions.RequestException | auth_exceptions.TransportError)


def translate(method: str, exc: BaseException) -> ExecutorError:
    """Map an SDK or transport error onto the executor exception tree."""
    if isinstance(exc, ExecutorError):
        return exc
    text = f"Cloud Run {method}: {getattr(exc, 'message', None) or exc}"
    if isinstance(exc, gexc.NotFound):
        return NotFound(text)
    if isinstance(exc, gexc.Conflict):
        # Over REST every 409 is ``Conflict``; ABORTED (a concurrent modification) is transient.
        if isinstance(exc, gexc.Aborted) or rpc_status(exc) == "ABORTED":
            return Unavailable(text)
        return Conflict(text)
    if isinstance(exc, gexc.TooManyRequests):
        return QuotaExceeded(text)
    if isinstance(exc, gexc.Forbidden | gexc.Unauthorized):
        return HostMisconfigured(
            f"{text} (the host's Google identity is not allowed to do this: check its roles, "
            "iam.serviceAccounts.actAs on the jobs' service account, and that the Cloud Run Admin API "
            "is enabled; jobs wait until the host is fixed)"
        )
    if isinstance(exc, gexc.BadRequest):
        return InvalidSpec(text)
    if isinstance(exc, gexc.GatewayTimeout | gexc.DeadlineExceeded):
        return NoAnswer(text)
    if isinstance(exc, gexc.ServerError | gexc.Cancelled):
        return Unavailable(text)
    if isinstance(exc, gexc.GoogleAPICallError):
        return ExecutorError(text)
    if isinstance(exc, TimeoutError | ConnectionError) or _is_transport_error(exc):
        return NoAnswer(text)
    if isinstance(exc, OSError):
        return Unavailable(text)
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, auth_exceptions.RefreshError):
        return HostMisconfigured(f"Cloud Run {method}: the host's credentials could not be refreshed")
    return ExecutorError(f"Cloud Run {method}: unexpected {type(exc).__name__}: {exc}")


class Calls:
    """Counts, times out, maps and retries the calls of one executor."""

    def __init__(
        self,
        *,
        call_timeout: float,
        retry_attempts: int,
        retry_backoff: float,
        retry_backoff_max: float,
    ) -> None:
        self.call_timeout = call_timeout
        self.retry_attempts = retry_attempts
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.lock = threading.Lock()
        #: Google requests made (every attempt, retries included), in total and by method.
        self.total = 0
        self.by_method: Counter[str] = Counter()
        #: Google requests that failed, by method.
        self.errors_by_method: Counter[str] = Counter()
        #: Attempts repeated after a transient error.
        self.retries = 0
        #: Injectable for tests.
        self.sleep: Callable[[float], None] = time.sleep

    def count(self, method: str) -> None:
        with self.lock:
            self.total += 1
            self.by_method[method] += 1

    def call(self, method: str, fn: Callable[..., T], /, *, retry: bool = True, **kwargs: Any) -> T:
        """One Google call with a timeout, counted, errors mapped, transient ones retried if ``retry``."""
        kwargs.setdefault("timeout", self.call_timeout)

        def attempt() -> T:
            self.count(method)
            try:
                return fn(**kwargs)
            except Exception as exc:
                with self.lock:
                    self.errors_by_method[method] += 1
                raise translate(method, exc) from exc

        if not retry or self.retry_attempts <= 1:
            return attempt()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry_attempts),
            wait=self.backoff,
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, Unavailable) and not isinstance(e, HostMisconfigured)
            ),
            before_sleep=self._count_retry,
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(attempt)

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        with self.lock:
            self.retries += 1

    def delay(self, attempt_number: int, exc: BaseException | None) -> float:
        """Exponential backoff with jitter; quota errors wait ``QUOTA_BACKOFF_FACTOR`` times longer."""
        factor = QUOTA_BACKOFF_FACTOR if isinstance(exc, QuotaExceeded) else 1.0
        ceiling = min(
            self.retry_backoff_max * factor, self.retry_backoff * factor * 2 ** (attempt_number - 1)
        )
        return random.uniform(ceiling / 2, ceiling)

    def backoff(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return self.delay(state.attempt_number, exc)

    def wait_until(self, method: str, poll: Callable[[], T | None], timeout: float, what: str) -> T:
        """Call ``poll`` with growing pauses until it returns a value, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pause = 0.05
        while True:
            value = poll()
            if value is not None:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"Cloud Run {method}: {what} after {timeout:g} s")
            self.sleep(min(pause, remaining))
            pause = min(pause * 2, 2.0)
