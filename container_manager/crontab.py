"""Cron expressions of schedules: validation and the times they name, through ``croniter``.

Only the classic five fields (minute, hour, day of month, month, day of week) are accepted;
croniter's extensions (a sixth field for seconds, a seventh for years, ``@daily``-style
nicknames, ``R`` for random) are refused so that an expression means the same here as in
crontab(5). Times are computed in the schedule's time zone and returned in that zone;
callers store them as aware date-times (UTC in the database).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter
from django.core.exceptions import ValidationError

#: Longest cron text accepted (five fields with lists and ranges fit easily).
MAX_CRON_LENGTH = 100
_FIELD_RE = re.compile(r"[0-9A-Za-z*/,-]+\Z")
#: Names crontab(5) allows in the month and day-of-week fields; croniter's other letters
#: (``H`` hashed, ``R`` random, ``L`` last) are not classic cron.
_NAMES = frozenset(
    [
        "jan",
        "feb",
        "mar",
        "apr",
        "may",
        "jun",
        "jul",
        "aug",
        "sep",
        "oct",
        "nov",
        "dec",
        "sun",
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
    ]
)


def check_cron(value: object) -> str:
    """The expression, normalised (single spaces); ``ValidationError`` on ``cron`` naming the rule."""
    if not isinstance(value, str):
        raise ValidationError({"cron": f"cron must be text, not {type(value).__name__}"})
    fields = value.split()
    if len(fields) != 5:
        raise ValidationError(
            {
                "cron": "cron needs five fields: minute hour day-of-month month day-of-week "
                f"(e.g. '30 2 * * *'); got {len(fields)}"
            }
        )
    text = " ".join(fields)
    if len(text) > MAX_CRON_LENGTH or not all(_FIELD_RE.match(field) for field in fields):
        raise ValidationError({"cron": f"cron {text[:40]!r} is not a cron expression"})
    words = {word.lower() for word in re.findall(r"[A-Za-z]+", text)}
    if not words <= _NAMES:
        raise ValidationError(
            {"cron": f"cron: {sorted(words - _NAMES)[0]!r} is not a month or weekday name (jan, mon, ...)"}
        )
    if not croniter.is_valid(text):
        raise ValidationError(
            {"cron": f"cron {text!r} is not valid: minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-7"}
        )
    return text


def check_timezone(value: object) -> ZoneInfo:
    """The IANA time zone named ``value`` (e.g. ``Europe/Paris``); ``ValidationError`` on ``timezone``."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValidationError(
            {"timezone": "timezone must be an IANA time zone name, e.g. 'UTC' or 'Europe/Paris'"}
        )
    try:
        if value not in _zones():
            raise ZoneInfoNotFoundError(value)
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            {
                "timezone": f"timezone {value[:64]!r} is not a known IANA time zone, e.g. 'UTC' or 'Europe/Paris'"
            }
        ) from None


_zone_names: frozenset[str] | None = None


def _zones() -> frozenset[str]:
    """Known zone names: ``ZoneInfo`` alone would also open any file path it is given."""
    global _zone_names
    if _zone_names is None:
        _zone_names = frozenset(available_timezones()) | {"UTC"}
    return _zone_names


def next_tick(cron: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first time the expression names strictly after ``after``."""
    result: datetime = croniter(cron, after.astimezone(zone)).get_next(datetime)
    return result


def latest_tick(cron: str, zone: ZoneInfo, at: datetime) -> datetime:
    """The last time the expression names at or before ``at``."""
    # croniter's get_prev() is strictly before its start: start a microsecond later.
    result: datetime = croniter(cron, (at + timedelta(microseconds=1)).astimezone(zone)).get_prev(datetime)
    return result
