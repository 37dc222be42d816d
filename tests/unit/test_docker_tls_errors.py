"""How a failed TLS handshake with a Docker daemon is said: in the host row's terms, classified.

The exceptions are built as requests and urllib3 nest them (requests' ``SSLError`` around
urllib3's ``MaxRetryError`` whose ``reason`` wraps ``ssl``'s error), so the walk through the
chain is what is tested; the real handshakes are in ``tests/integration/multihost``.
"""

from __future__ import annotations

import ssl

import docker.errors
import pytest
import requests
import urllib3

from executors.docker.errors import translate
from executors.exceptions import HostMisconfigured, InvalidSpec, Unavailable

URL = "tcp://10.0.0.7:2376"


def _ssl(reason: str, cls: type[ssl.SSLError] = ssl.SSLError, **attrs: str) -> ssl.SSLError:
    error = cls(1, f"[SSL: {reason}] ({reason.lower()}) (_ssl.c:1006)")
    error.reason = reason
    for name, value in attrs.items():
        setattr(error, name, value)
    return error


def _as_requests_raises(inner: BaseException) -> BaseException:
    """requests.exceptions.SSLError(MaxRetryError(reason=urllib3 SSLError(inner)))."""
    wrapped = urllib3.exceptions.SSLError(inner)
    wrapped.__cause__ = inner
    retry = urllib3.exceptions.MaxRetryError(None, "/version", wrapped)  # type: ignore[arg-type]
    outer = requests.exceptions.SSLError(retry)
    outer.__context__ = retry
    return outer


CASES = [
    # (the innermost error, the class it becomes, words the message must hold)
    (
        _ssl("CERTIFICATE_VERIFY_FAILED", ssl.SSLCertVerificationError, verify_message="hostname mismatch"),
        HostMisconfigured,
        ["tls_ca_cert", "not trusted", "hostname mismatch"],
    ),
    (_ssl("TLSV1_ALERT_UNKNOWN_CA"), HostMisconfigured, ["tls_client_cert", "unknown ca"]),
    (_ssl("SSLV3_ALERT_BAD_CERTIFICATE"), HostMisconfigured, ["tls_client_cert", "bad certificate"]),
    (
        _ssl("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        HostMisconfigured,
        ["tls_client_cert", "certificate required"],
    ),
    (_ssl("WRONG_VERSION_NUMBER"), HostMisconfigured, ["does not answer in TLS"]),
    # An EOF may be a refusal or a network that cut the connection: retried, and explained.
    (
        _ssl("UNEXPECTED_EOF_WHILE_READING", ssl.SSLEOFError),
        Unavailable,
        ["if this persists", "tls_client_cert"],
    ),
]


@pytest.mark.parametrize(("inner", "kind", "words"), CASES, ids=lambda v: getattr(v, "reason", None))
def test_a_refused_handshake_is_named_in_the_hosts_terms(
    inner: BaseException, kind: type[Exception], words: list[str]
) -> None:
    error = translate(_as_requests_raises(inner), "ping", URL)
    assert type(error) is kind
    text = str(error)
    assert text.startswith("ping: ") and URL in text, text
    for word in words:
        assert word in text, text
    for internal in ("HTTPSConnectionPool", "Max retries", "_ssl.c", "SSLError("):
        assert internal not in text, text


def test_docker_py_wrapping_the_version_probe_is_seen_through() -> None:
    """``version='auto'`` wraps the failure in a DockerException *from* it."""
    try:
        try:
            raise _as_requests_raises(_ssl("TLSV1_ALERT_UNKNOWN_CA"))
        except requests.exceptions.SSLError as exc:
            raise docker.errors.DockerException(f"Error while fetching server API version: {exc}") from exc
    except docker.errors.DockerException as wrapped:
        error = translate(wrapped, "", URL)
    assert isinstance(error, HostMisconfigured) and "tls_client_cert" in str(error)


def test_plain_http_to_a_tls_port_is_a_host_setting_not_a_bad_spec() -> None:
    """Docker answers 400 "Client sent an HTTP request to an HTTPS server."; not InvalidSpec."""
    response = requests.Response()
    response.status_code = 400
    response._content = b"Client sent an HTTP request to an HTTPS server.\n"
    explanation = response.content.decode().strip()  # as create_api_error_from_http_exception does
    api_error = docker.errors.APIError("400 Client Error", response=response, explanation=explanation)
    error = translate(api_error, "inspect job-1", URL)
    assert isinstance(error, HostMisconfigured) and not isinstance(error, InvalidSpec)
    assert "tls_ca_cert" in str(error)


def test_other_ssl_errors_keep_their_usual_translation() -> None:
    error = translate(_as_requests_raises(_ssl("SOMETHING_ELSE")), "ping", URL)
    assert type(error) is Unavailable and "did not answer" in str(error)
