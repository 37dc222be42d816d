"""Ages and durations in words, for the admin and the command line alike."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone


def age(moment: datetime, now: datetime | None = None) -> str:
    """``"42 s ago"``, ``"3 min ago"``, ``"2 h 5 min ago"``, ``"4 d 3 h ago"``; ``"in 5 s"`` ahead."""
    delta = (now or timezone.now()) - moment
    future = delta < timedelta(0)
    seconds = int(abs(delta.total_seconds()))
    if seconds < 60:
        text = f"{seconds} s"
    elif seconds < 3600:
        text = f"{seconds // 60} min"
    elif seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        text = f"{hours} h {minutes} min" if minutes else f"{hours} h"
    else:
        days, hours = divmod(seconds // 3600, 24)
        text = f"{days} d {hours} h" if hours else f"{days} d"
    return f"in {text}" if future else f"{text} ago"


def human_duration(value: timedelta | None) -> str:
    """``"850 ms"``, ``"12 s"``, ``"3 min 05 s"``, ``"2 h 04 min"``; blank when there is none."""
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {rest // 60:02d} min"
