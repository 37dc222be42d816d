"""Docker's failures mapped onto the executor exception tree, with secrets scrubbed.

The call layer (``executors._calls``) retries what ``translate`` calls transient: connection
errors, timeouts and 5xx answers, except the 5xx that ``start`` returns for a spec that cannot
run (a missing executable or user), which no retry fixes. Messages never carry an environment
value: Docker echoes a bad variable in some errors, and the values of a job's environment (or
a TLS path read from the host's environment) are replaced before any message is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import docker.errors
import requests
import urllib3

from executors.exceptions import (
    ConfigurationError,
    Conflict,
    ExecutorError,
    ImageNotFound,
    InvalidSpec,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from executors.types import ContainerSpec

#: 5xx answers that no retry will fix (seen from ``start`` when the spec cannot run).
PERMANENT_SERVER_ERRORS = (
    "executable file not found",
    "unable to find user",
    "no matching entries in passwd",
    "no such file or directory",
    "not a directory",
    "exec format error",
    "argument list too long",
)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    OSError,
)
_ENV_ECHO = re.compile(r"(environment variable:?\s*)[^\")\n]*")


def explain(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    text = str(text)
    return text if len(text) <= 600 else text[:600] + "..."


def scrub(text: str, values: Sequence[str]) -> str:
    """Remove environment values (and Docker's echo of a bad variable) from an error message."""
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        text = text.replace(value, "***")
    return _ENV_ECHO.sub(r"\1<hidden>", text)


def secret_values(spec: ContainerSpec) -> tuple[str, ...]:
    """Every value of a secret key; other values when long enough that replacing them cannot
    mangle an unrelated message (a value "1" would)."""
    return tuple(v for k, v in spec.env if v and (k in spec.secret_keys or len(v) >= 4))


def check(response: requests.Response) -> None:
    """Raise docker-py's ``APIError`` for an error answer to a raw request (closing it)."""
    try:
        response.raise_for_status()
    except requests.exceptions.HTTPError as exc:
        try:
            docker.errors.create_api_error_from_http_exception(exc)  # reads the body; always raises
        finally:
            response.close()


def translate(exc: BaseException, what: str, base_url: str, hidden: Sequence[str] = ()) -> ExecutorError:
    """Any failure -> our exception tree; the message names ``what`` and is scrubbed of ``hidden``."""
    if isinstance(exc, ExecutorError):
        return exc
    detail = scrub(explain(exc), hidden)
    prefix = f"{what}: " if what else ""
    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageNotFound(f"{prefix}{detail}")
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code
        if status == 404:
            return NotFound(f"{prefix}{detail}")
        if status == 409:
            return Conflict(f"{prefix}{detail}")
        if status == 429:
            return QuotaExceeded(f"{prefix}{detail}")
        if status is None or (
            status >= 500 and not any(p in detail.lower() for p in PERMANENT_SERVER_ERRORS)
        ):
            return Unavailable(f"{prefix}Docker at {base_url} answered {status}: {detail}")
        return InvalidSpec(f"{prefix}{detail}")
    if isinstance(exc, CONNECTION_ERRORS):
        return Unavailable(f"{prefix}Docker at {base_url} did not answer: {detail}")
    if isinstance(exc, docker.errors.TLSParameterError):
        return ConfigurationError(f"{prefix}{detail}")
    if type(exc) is docker.errors.DockerException:
        # docker-py's own wrapper for "could not talk to the daemon".
        return Unavailable(f"{prefix}{detail}")
    if isinstance(exc, docker.errors.DockerException | ValueError | TypeError):
        return InvalidSpec(f"{prefix}{detail}")
    return ExecutorError(f"{prefix}unexpected {type(exc).__name__}: {detail}")
