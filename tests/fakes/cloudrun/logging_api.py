"""A fake of Cloud Logging's ``entries.list`` (v2 REST) holding what Cloud Run writes for a job.

For each execution Cloud Run writes the container's output to the logs
``run.googleapis.com/stdout`` and ``run.googleapis.com/stderr``, platform messages to
``run.googleapis.com/varlog/system`` (https://cloud.google.com/run/docs/logging), and the API
calls to ``cloudaudit.googleapis.com/activity``, whose CreateJob record holds the job spec,
environment values included (https://cloud.google.com/run/docs/audit-logging). All of them
carry the job's ``cloud_run_job`` resource, so only a ``logName`` clause tells them apart.

The filter is evaluated as the Logging query language defines it
(https://cloud.google.com/logging/docs/view/logging-query-language): comparisons
``path OP value`` with ``=``, ``!=``, ``>``, ``<``, ``>=``, ``<=`` and ``:`` (has), path
segments quoted when they hold dots or slashes, ``NOT``, ``OR`` binding tighter than ``AND``,
and ``AND`` implicit between adjacent terms. Anything else is refused with 400, as a query
the service cannot parse would be.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any

from tests.fakes.cloudrun.wire import ApiError

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<op>>=|<=|!=|=|>|<|:)|(?P<paren>[()])|(?P<dot>\.)|(?P<word>[A-Za-z0-9_\-@/%*]+))'
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise ApiError(400, f"Unparseable filter at offset {pos}: {text[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _lookup(entry: dict[str, Any], path: list[str]) -> Any:
    value: Any = entry
    for segment in path:
        if not isinstance(value, dict):
            return None
        value = value.get(segment)
    return value


def _compare(actual: Any, op: str, expected: str, path: list[str]) -> bool:
    if actual is None:
        return op == "!="
    if path == ["timestamp"]:
        left, right = _time(str(actual)), _time(expected)
    else:
        left, right = str(actual), expected
    if op == "=":
        return left == right
    if op == "!=":
        return left != right
    if op == ":":
        return str(expected).lower() in str(actual).lower()
    return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[op]  # type: ignore[operator]


def _time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"Invalid timestamp {text!r} in filter") from None


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ApiError(400, "Unexpected end of filter")
        self.pos += 1
        return token

    def parse(self) -> Any:
        node = self.conjunction()
        if self.peek() is not None:
            raise ApiError(400, f"Unexpected {self.peek()[1]!r} in filter")  # type: ignore[index]
        return node

    def conjunction(self) -> Any:
        terms = [self.disjunction()]
        while (token := self.peek()) is not None and token != ("paren", ")"):
            if token == ("word", "AND"):
                self.take()
            terms.append(self.disjunction())
        return ("and", terms)

    def disjunction(self) -> Any:
        terms = [self.unary()]
        while self.peek() == ("word", "OR"):
            self.take()
            terms.append(self.unary())
        return ("or", terms)

    def unary(self) -> Any:
        if self.peek() == ("word", "NOT"):
            self.take()
            return ("not", self.unary())
        if self.peek() == ("paren", "("):
            self.take()
            node = self.conjunction()
            if self.take() != ("paren", ")"):
                raise ApiError(400, "Unbalanced parentheses in filter")
            return node
        path = [self._segment(self.take())]
        while self.peek() == ("dot", "."):
            self.take()
            path.append(self._segment(self.take()))
        kind, op = self.take()
        if kind != "op":
            raise ApiError(400, f"Expected a comparison after {'.'.join(path)!r}")
        kind, value = self.take()
        if kind not in ("str", "word"):
            raise ApiError(400, f"Expected a value after {op!r}")
        return ("cmp", path, op, value[1:-1].replace('\\"', '"') if kind == "str" else value)

    @staticmethod
    def _segment(token: tuple[str, str]) -> str:
        kind, text = token
        if kind == "str":
            return text[1:-1]
        if kind == "word" and text not in ("AND", "OR", "NOT"):
            return text
        raise ApiError(400, f"Expected a field name, got {text!r}")


def _matches(node: Any, entry: dict[str, Any]) -> bool:
    kind = node[0]
    if kind == "and":
        return all(_matches(n, entry) for n in node[1])
    if kind == "or":
        return any(_matches(n, entry) for n in node[1])
    if kind == "not":
        return not _matches(node[1], entry)
    _, path, op, value = node
    return _compare(_lookup(entry, path), op, value, path)


def list_entries(entries: list[dict[str, Any]], body: dict[str, Any], now_ts: str) -> dict[str, Any]:
    """``entries.list``: ``resourceNames``, ``filter``, ``orderBy``, ``pageSize``, ``pageToken``."""
    projects = {n.split("/", 1)[1] for n in body.get("resourceNames") or [] if n.startswith("projects/")}
    if not projects:
        raise ApiError(400, "resourceNames must name at least one project")
    tree = _Parser(body["filter"]).parse() if body.get("filter") else ("and", [])
    selected = [
        e
        for e in entries
        if e["logName"].split("/")[1] in projects and e["timestamp"] <= now_ts and _matches(tree, e)
    ]
    order = (body.get("orderBy") or "timestamp asc").strip().lower()
    if order not in ("timestamp asc", "timestamp desc"):
        raise ApiError(400, f"Unsupported orderBy {order!r}")
    selected.sort(key=lambda e: (e["timestamp"], e["insertId"]), reverse=order.endswith("desc"))
    size = min(int(body.get("pageSize") or 50), 1000)
    token = body.get("pageToken") or ""
    offset = int(base64.urlsafe_b64decode(token).decode()) if token else 0
    page = selected[offset : offset + size]
    out: dict[str, Any] = {"entries": page} if page else {}
    if offset + size < len(selected):
        out["nextPageToken"] = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
    return out
