"""Cloud Run's side of the shared call layer: the per-call timeout and the error mapping.

Every Google call goes through ``GoogleCalls.call``, which is ``executors._calls.Calls``
(counting, bounded retries with the project's backoff) with ``translate`` as its hook.

Over the REST transport the api_core exception class follows the HTTP status (409 is
``Conflict``, 400 ``BadRequest``, 403 ``Forbidden``, 429 ``TooManyRequests``), so errors are
mapped on those base classes, reading the RPC status from the error body where it matters.

* 403 (``PERMISSION_DENIED``: the host's identity lacks a permission such as
  ``iam.serviceAccounts.actAs`` on the job's service account, or the Cloud Run Admin API is
  disabled) and 401 are the host's problem, not the job's: ``HostMisconfigured``, which is
  transient for the reconciler (jobs wait, the host is marked unhealthy) and not retried here.
* 429 (``RESOURCE_EXHAUSTED``: API rate quotas, and limits such as 1000 jobs or 1000 running
  executions per region, https://cloud.google.com/run/quotas) is ``QuotaExceeded``: transient,
  backed off longer by the call layer.
* A call that got no answer (client timeout, connection dropped, 504) is ``NoAnswer``: the
  server may have acted on it, which matters for requests that are not idempotent (RunJob).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core import exceptions as gexc

from executors._calls import Calls
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

#: The Google methods the executor calls: the verbs of its ``counters()``.
METHODS = (
    "create_job",
    "get_job",
    "run_job",
    "delete_job",
    "get_operation",
    "get_execution",
    "list_executions",
    "cancel_execution",
    "list_tasks",
    "list_jobs",
    "list_log_entries",
)

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


class GoogleCalls(Calls):
    """The shared call layer with Cloud Run's error mapping and a default timeout per call."""

    def __init__(
        self,
        *,
        call_timeout: float,
        retry_attempts: int,
        retry_backoff: float,
        retry_backoff_max: float,
    ) -> None:
        super().__init__(
            lambda exc: translate("call", exc),
            attempts=retry_attempts,
            backoff=retry_backoff,
            backoff_max=retry_backoff_max,
            verbs=METHODS,
        )
        self.call_timeout = call_timeout

    def call(self, method: str, fn: Callable[..., T], /, *, retry: bool = True, **kwargs: Any) -> T:
        """``fn(**kwargs)`` with a timeout, counted under ``method``, errors mapped, transient ones retried."""
        kwargs.setdefault("timeout", self.call_timeout)
        return self.run(
            method, lambda: fn(**kwargs), retry=retry, translate=lambda exc: translate(method, exc)
        )
