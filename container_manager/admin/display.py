"""How the admin shows statuses, times and output: small pure functions the pages share.

Statuses are badges whose colours come from the admin's own CSS variables (``admin.css``),
so they stay legible in the light and the dark theme. Times carry seconds, the time zone and
a relative age. Output is shown as a bounded tail cut on a line boundary, with what was left
out said in words rather than hinted by an icon.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from container_manager.humanize import age, human_duration
from container_manager.states import TERMINAL, JobStatus

#: Bytes of each stream shown on a page; the rest is dropped from the start, line by line.
OUTPUT_DISPLAY_BYTES = 32 * 1024

#: Tone of each status, a class of ``admin.css`` mapped onto the admin's theme variables.
_TONES = {
    JobStatus.PENDING: "quiet",
    JobStatus.LAUNCHING: "live",
    JobStatus.RUNNING: "live",
    JobStatus.RETRYING: "warn",
    JobStatus.COMPLETED: "ok",
    JobStatus.FAILED: "bad",
    JobStatus.TIMEOUT: "bad",
    JobStatus.CANCELLED: "off",
}
_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


def status_badge(status: str) -> SafeString:
    """A badge for a job's or an attempt's status (the statuses share their names)."""
    try:
        tone = _TONES[JobStatus(status)]
    except ValueError:
        tone = "quiet"
    terminal = "true" if status in _TERMINAL_VALUES else "false"
    return format_html(
        '<span class="cm-badge cm-{}" data-status="{}" data-terminal="{}">{}</span>',
        tone,
        status,
        terminal,
        status,
    )


def clock_time(moment: datetime) -> str:
    """``2026-01-01 12:00:05 UTC`` in the current time zone."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")


def when(moment: datetime | None, now: datetime | None = None) -> SafeString | str:
    """A time with seconds and time zone, and its age beside it; blank when there is none."""
    if moment is None:
        return ""
    return format_html(
        '<time datetime="{}">{}</time> <span class="cm-age">({})</span>',
        moment.isoformat(),
        clock_time(moment),
        age(moment, now),
    )


@dataclass(frozen=True)
class Shown:
    """The part of one stream a page shows, and what it leaves out."""

    text: str
    #: bytes left out at the start by this page (whole lines).
    dropped_bytes: int
    #: the output had already been cut to its tail before it reached the page (by the recorder
    #: or the executor's bounded read), so even the full text would not start at the beginning.
    cut_before: bool

    @property
    def banner(self) -> str:
        """What a reader must know about the start of this text; empty when it is all there."""
        parts = []
        if self.dropped_bytes:
            parts.append(
                f"first {kib(self.dropped_bytes)} dropped; showing the last {kib(len(self.text.encode()))}"
            )
        if self.cut_before:
            parts.append("earlier output was not kept (only a bounded tail of each stream is recorded)")
        return "; ".join(parts)


def kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 10 * 1024 else f"{size // 1024} KiB"


def tail_on_line(text: str, max_bytes: int = OUTPUT_DISPLAY_BYTES, cut_before: bool = False) -> Shown:
    """The last ``max_bytes`` (UTF-8) of ``text``, starting at a line start when one is in reach.

    A tail that holds no newline at all (one enormous line) is cut at a character boundary.
    """
    data = text.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return Shown(text, 0, cut_before)
    tail = data[-max_bytes:]
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1 :]
    else:
        while tail and (tail[0] & 0xC0) == 0x80:  # a UTF-8 continuation byte: not a character start
            tail = tail[1:]
    return Shown(tail.decode("utf-8", errors="replace"), len(data) - len(tail), cut_before)


__all__ = [
    "OUTPUT_DISPLAY_BYTES",
    "Shown",
    "age",
    "clock_time",
    "human_duration",
    "kib",
    "status_badge",
    "tail_on_line",
    "when",
]
