"""The one answer to "what happens to this key next", given by decisions, actions and steps alike.

* ``Done``: nothing more to do until a hint brings the key back (an executor event, a database
  notification, the periodic resync).
* ``Again``: decide again at once. ``snapshot`` is the state the action just wrote (carried
  forward, so nothing is read back) and ``facts`` what it learnt; ``snapshot=None`` means "read
  the rows again" (another writer moved first).
* ``RequeueAfter``: look again after ``seconds``; ``why`` says why, for logs and metrics.

A step ends with ``Done`` or ``RequeueAfter``; ``Again`` never leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Done:
    """Wait for a hint."""


@dataclass(frozen=True)
class Again:
    """Decide again now, from ``snapshot`` (or from a fresh read when it is None)."""

    snapshot: Any = None
    facts: Any = None


@dataclass(frozen=True)
class RequeueAfter:
    """Look again after ``seconds``."""

    seconds: float
    why: str = ""


Outcome = Done | Again | RequeueAfter

DONE = Done()
REREAD = Again()
