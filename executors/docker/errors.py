"""Docker's failures mapped onto the executor exception tree, with secrets scrubbed.

The call layer (``executors._calls``) retries what ``translate`` calls transient: connection
errors, timeouts and 5xx answers, except the 5xx that ``start`` returns for a spec that cannot
run (a missing executable or user), which no retry fixes. Messages never carry an environment
value: Docker echoes a bad variable in some errors, and the values of a job's environment (or
a TLS path read from the host's environment) are replaced before any message is built.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator, Sequence

import docker.errors
import requests
import urllib3

from executors.exceptions import (
    ConfigurationError,
    Conflict,
    ExecutorError,
    HostMisconfigured,
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
#: OpenSSL's names of the TLS alerts by which a daemon refuses the client's certificate.
CLIENT_CERT_ALERTS = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    }
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


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: causes, contexts, urllib3's ``reason``, exceptions in ``args``."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))


def tls_refusal(exc: BaseException, base_url: str) -> ExecutorError | None:
    """A failed TLS handshake said in the host row's terms (``tls_ca_cert``, ``tls_client_cert``).

    urllib3 reports these as ``HTTPSConnectionPool(...): Max retries exceeded ... (_ssl.c:1006)``,
    and a daemon that refuses the client's certificate is often only seen as an EOF. Those whose
    cause is certain are ``HostMisconfigured`` (no retry fixes them; the host's jobs wait).
    """
    for error in _chain(exc):
        if isinstance(error, ssl.SSLCertVerificationError):
            why = error.verify_message or "certificate verify failed"
            return HostMisconfigured(
                f"the certificate of Docker at {base_url} is not trusted ({why}): tls_ca_cert must be "
                "the CA that signed the daemon's --tlscert"
            )
        if isinstance(error, ssl.SSLError) and error.reason in CLIENT_CERT_ALERTS:
            alert = error.reason.split("_ALERT_", 1)[-1].lower().replace("_", " ")
            return HostMisconfigured(
                f"Docker at {base_url} refused the client certificate ({alert}): tls_client_cert must "
                "be signed by the CA the daemon trusts (its --tlscacert), with tls_client_key its key"
            )
        if isinstance(error, ssl.SSLError) and error.reason == "WRONG_VERSION_NUMBER":
            return HostMisconfigured(
                f"Docker at {base_url} does not answer in TLS: remove the tls_* settings, or start "
                "the daemon with --tlsverify"
            )
        if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return Unavailable(
                f"Docker at {base_url} closed the TLS connection without a word; if this persists, "
                "it does not accept tls_client_cert (it must be signed by the CA the daemon trusts, "
                "its --tlscacert)"
            )
        if "HTTP request to an HTTPS server" in str(error):
            return HostMisconfigured(
                f"Docker at {base_url} only answers in TLS: set tls_ca_cert, tls_client_cert and "
                "tls_client_key"
            )
    return None


def translate(exc: BaseException, what: str, base_url: str, hidden: Sequence[str] = ()) -> ExecutorError:
    """Any failure -> our exception tree; the message names ``what`` and is scrubbed of ``hidden``."""
    if isinstance(exc, ExecutorError):
        return exc
    prefix = f"{what}: " if what else ""
    refusal = tls_refusal(exc, base_url)
    if refusal is not None:
        return type(refusal)(f"{prefix}{refusal}")
    detail = scrub(explain(exc), hidden)
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
