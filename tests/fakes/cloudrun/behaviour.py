"""What an execution's task does in the fake: a tiny script, since no image really runs.

Sources, first match wins: the container env var ``FAKE_BEHAVIOUR``
(``"start=0.1;sleep=0.5;exit=3"``, ``hang``, ``oom``, ``crash``, ``say=text``, ``warn=text``),
the argv in the mock executor's script language (``sh -c "echo hi; sleep 1; exit 3"``,
``false``, ``hang``), a per-image script (``FakeCloudRun.set_behaviour``), else the default.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass
class Behaviour:
    """What an execution's task does."""

    #: seconds spent provisioning before the task starts (None = server default)
    start: float | None = None
    #: seconds the task runs (None = server default)
    duration: float | None = None
    exit_code: int = 0
    hang: bool = False
    #: killed by the platform for exceeding its memory limit when ``duration`` is up
    oom: bool = False
    #: ends without an exit code or signal ("unable to exit cleanly")
    crash: bool = False
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


def parse_behaviour(text: str) -> Behaviour:
    """``"start=0.1;sleep=0.5;exit=3"``, ``"hang"``, ``"oom"``, ``"crash"``, ``"say=hello"``."""
    behaviour = Behaviour()
    for part in (text or "").split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition("=")
        key = key.strip()
        if key == "sleep":
            behaviour.duration = float(value)
        elif key == "start":
            behaviour.start = float(value)
        elif key == "exit":
            behaviour.exit_code = int(value)
        elif key in ("hang", "oom", "crash"):
            setattr(behaviour, key, True)
        elif key == "say":
            behaviour.stdout.append(value)
        elif key == "warn":
            behaviour.stderr.append(value)
        else:
            raise ValueError(f"unknown FAKE_BEHAVIOUR step {part!r}")
    return behaviour


def behaviour_from_argv(argv: list[str]) -> Behaviour | None:
    """The mock executor's script language: ``sh -c "echo hi; sleep 1; exit 3"``, ``false``, ``hang``."""
    if not argv:
        return None
    if len(argv) >= 3 and argv[0] in ("sh", "/bin/sh") and argv[1] == "-c":
        steps = [shlex.split(part) for part in argv[2].split(";")]
    else:
        steps = [argv]
    behaviour = Behaviour(duration=0.0)
    for step in steps:
        if not step:
            continue
        verb, args = step[0], step[1:]
        if verb == "sleep":
            behaviour.duration = (behaviour.duration or 0.0) + (float(args[0]) if args else 0.0)
        elif verb == "echo":
            if args[-1:] == [">&2"]:
                behaviour.stderr.append(" ".join(args[:-1]))
            else:
                behaviour.stdout.append(" ".join(args))
        elif verb == "exit":
            behaviour.exit_code = int(args[0]) if args else 0
            break
        elif verb == "false":
            behaviour.exit_code = 1
            break
        elif verb in ("hang", "oom", "crash"):
            setattr(behaviour, verb, True)
            break
    return behaviour
