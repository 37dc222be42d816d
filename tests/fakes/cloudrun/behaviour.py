"""What an execution's task does in the fake: a tiny script, since no image really runs.

Sources, first match wins: the container env var ``FAKE_BEHAVIOUR``
(``"start=0.1;sleep=0.5;exit=3"``, ``hang``, ``oom``, ``crash``, ``say=text``, ``warn=text``),
the argv read by ``executors.script`` as the mock executor reads it (``sh -c "echo hi; sleep 1;
exit 3"``, ``false``, ``hang``, ``stderr text``; ``vanish`` has no Cloud Run meaning and is
ignored), a per-image script (``FakeCloudRun.set_behaviour``), else the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from executors.script import parse_script


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
    """The argv as the mock executor reads it (``executors.script``); None for an empty argv."""
    if not argv:
        return None
    script = parse_script(argv)
    return Behaviour(
        duration=script.duration,
        exit_code=script.exit_code,
        hang=script.hang,
        oom=script.oom,
        crash=script.crash,
        stdout=script.stdout.decode(errors="replace").splitlines(),
        stderr=script.stderr.decode(errors="replace").splitlines(),
    )
