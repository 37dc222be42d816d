"""The one backoff formula of the project: exponential, capped, with "equal jitter".

Every wait between two tries uses it: a job's next attempt, the daemon's retry of a step that
raised, an executor's retry of a transient API error, the Docker event stream's reconnect, the
Cloud Run operation polls. It is pure (no clock, no I/O, nothing of ours imported), so every
layer may import it, ``reconciler/decide.py`` included.

The delay after the ``attempt``-th failure is uniform in ``[d * (1 - jitter), d]`` with
``d = min(cap, base * 2**(attempt - 1))``: with the default ``jitter=0.5`` it is in [d/2, d],
so callers failing together spread out while none waits less than half the nominal delay;
``jitter=0`` gives the plain doubling ``d``. With a ``key`` (a job id, a work-queue key) the
draw is derived from ``(key, attempt)``, so a given job's schedule is reproducible; with
``key=None`` it is random.
"""

from __future__ import annotations

import math
import random

#: The longest delay ever returned, whatever the arguments say (30 days).
MAX_BACKOFF_SECONDS = 30 * 24 * 3600.0


def backoff_seconds(key: object, attempt: int, base: float, cap: float, jitter: float = 0.5) -> float:
    """Seconds to wait after the ``attempt``-th failure (1 for the first); never negative.

    Values no caller should pass (negative, NaN, huge) are clamped to [0, ``MAX_BACKOFF_SECONDS``],
    and ``jitter`` to [0, 1].
    """
    exponent = min(max(0, attempt - 1), 64)
    ceiling = min(cap, base * 2.0**exponent, MAX_BACKOFF_SECONDS)
    if not math.isfinite(ceiling) or ceiling < 0:
        ceiling = 0.0 if math.isnan(ceiling) or ceiling < 0 else MAX_BACKOFF_SECONDS
    spread = min(max(jitter, 0.0), 1.0) if math.isfinite(jitter) else 0.0
    if not spread:
        return ceiling
    u = random.random() if key is None else random.Random(f"{key}:{attempt}").random()
    return ceiling * (1.0 - spread * (1.0 - u))
