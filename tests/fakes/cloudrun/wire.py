"""The wire format of Google's REST APIs as the real clients send and expect it.

JSON with camelCase fields, int64 as strings, enums by name or by number when the client asks
``$alt=json;enum-encoding=int`` (google-cloud-run does); errors as
``{"error": {"code", "message", "status"}}`` (https://cloud.google.com/apis/design/errors).
Also the HTTP server the fake runs on, which can drop its connections as a dead service would.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
#: google.rpc.Code numbers used in ``Status`` messages (TaskAttemptResult.status, operation errors).
RPC_CODES = {"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "DEADLINE_EXCEEDED": 4, "RESOURCE_EXHAUSTED": 8}

# Enum tables (name -> number) for the enums this fake reads or writes.
ENUMS: dict[str, dict[str, int]] = {
    "state": {
        "STATE_UNSPECIFIED": 0,
        "CONDITION_PENDING": 1,
        "CONDITION_RECONCILING": 2,
        "CONDITION_FAILED": 3,
        "CONDITION_SUCCEEDED": 4,
    },
    "severity": {"SEVERITY_UNSPECIFIED": 0, "ERROR": 1, "WARNING": 2, "INFO": 3},
    "executionReason": {
        "EXECUTION_REASON_UNDEFINED": 0,
        "JOB_STATUS_SERVICE_POLLING_ERROR": 1,
        "NON_ZERO_EXIT_CODE": 2,
        "CANCELLED": 3,
        "CANCELLING": 4,
        "DELETED": 5,
        "DELAYED_START_PENDING": 6,
    },
    "reason": {"COMMON_REASON_UNDEFINED": 0, "UNKNOWN": 1, "WAITING_FOR_OPERATION": 13, "INTERNAL": 16},
    "launchStage": {
        "LAUNCH_STAGE_UNSPECIFIED": 0,
        "EARLY_ACCESS": 1,
        "ALPHA": 2,
        "BETA": 3,
        "GA": 4,
        "DEPRECATED": 5,
        "UNIMPLEMENTED": 6,
        "PRELAUNCH": 7,
    },
    "egress": {"VPC_EGRESS_UNSPECIFIED": 0, "ALL_TRAFFIC": 1, "PRIVATE_RANGES_ONLY": 2},
    "executionEnvironment": {
        "EXECUTION_ENVIRONMENT_UNSPECIFIED": 0,
        "EXECUTION_ENVIRONMENT_GEN1": 1,
        "EXECUTION_ENVIRONMENT_GEN2": 2,
    },
    "completionStatus": {
        "COMPLETION_STATUS_UNSPECIFIED": 0,
        "EXECUTION_SUCCEEDED": 1,
        "EXECUTION_FAILED": 2,
        "EXECUTION_RUNNING": 3,
        "EXECUTION_PENDING": 4,
        "EXECUTION_CANCELLED": 5,
    },
}
ENUM_NAMES = {key: {v: k for k, v in table.items()} for key, table in ENUMS.items()}


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


def ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def duration_s(text: Any) -> float:
    if isinstance(text, int | float):
        return float(text)
    if isinstance(text, str) and text.endswith("s"):
        return float(text[:-1])
    raise ApiError(400, f"Invalid duration {text!r}")


def memory_mib(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?", text or "")
    if not match:
        raise ApiError(400, f"Invalid memory limit {text!r}")
    number, unit = float(match[1]), match[2] or ""
    factor = {
        "": 1 / 2**20,
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "Ti": 1024**2,
        "K": 1000 / 2**20,
        "M": 10**6 / 2**20,
        "G": 10**9 / 2**20,
        "T": 10**12 / 2**20,
    }[unit]
    return number * factor


def cpu(text: str) -> float:
    if re.fullmatch(r"\d+m", text or ""):
        return int(text[:-1]) / 1000
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ApiError(400, f"Invalid cpu limit {text!r}") from None


def enum_names(value: Any) -> Any:
    """Normalise enum fields the client sent as numbers to their names."""
    if isinstance(value, dict):
        return {
            k: ENUM_NAMES[k].get(v, str(v)) if k in ENUMS and isinstance(v, int) else enum_names(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [enum_names(v) for v in value]
    return value


def enum_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ENUMS[k].get(v, 0) if k in ENUMS and isinstance(v, str) else enum_numbers(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [enum_numbers(v) for v in value]
    return value


class Handles(Protocol):
    def handle(self, verb: str, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]: ...


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: Handles) -> None:
        handler = type("Handler", (_Handler,), {"app": app})
        super().__init__(("127.0.0.1", 0), handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections, self.connections = list(self.connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: without this, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    app: Handles

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.app.handle(self.command, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass
