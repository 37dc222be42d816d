"""The script language of the stand-in backends: what a command does where no program runs.

The mock executor runs no image, and neither does the test suite's fake of Cloud Run; both
read a container's argv as this tiny script instead, through ``parse_script``, and the busybox
test image ships helper commands of the same names, so one command means the same on the mock,
on real Docker and on the fake.

A script is ``;``-separated steps (``sh -c "..."`` is unwrapped, each step split like a shell
would); without ``sh -c`` the argv is a single step:

``echo WORDS`` (stdout; ``echo WORDS >&2``: stderr), ``stderr WORDS``, ``spew BYTES`` (that many
``x`` on stdout), ``sleep SECONDS``, ``exit CODE``, ``false`` (exit 1), ``oom`` (killed for
exceeding the memory limit), ``hang`` (never exits), ``vanish`` (the container disappears when
done), ``crash`` (ends without an exit code). ``exit``, ``false``, ``oom``, ``hang``, ``vanish``
and ``crash`` end the script. Any other program succeeds silently.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

#: Steps after which nothing else of the script runs.
FINAL_STEPS = ("exit", "false", "oom", "hang", "vanish", "crash")


class ScriptError(ValueError):
    """The script cannot be read (an unbalanced quote, ``sleep soon``, ``exit 1.5``)."""


@dataclass
class Script:
    """What a scripted container does, step by step folded into one outcome."""

    stdout: bytes = b""
    stderr: bytes = b""
    #: Seconds it runs (the sum of its sleeps).
    duration: float = 0.0
    exit_code: int = 0
    oom: bool = False
    hang: bool = False
    vanish: bool = False
    crash: bool = False


def _steps(command: Sequence[str]) -> list[list[str]]:
    if len(command) >= 3 and command[0] in ("sh", "/bin/sh") and command[1] == "-c":
        try:
            return [shlex.split(part) for part in command[2].split(";")]
        except ValueError as exc:
            raise ScriptError(f"cannot split the script: {exc}") from None
    return [list(command)]


def _number(step: list[str], kind: type[int] | type[float]) -> int | float:
    if len(step) < 2:
        return kind(0)
    try:
        value = kind(step[1])
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ScriptError(f"{step[0]} needs a non-negative {kind.__name__}, got {step[1]!r}")
    return value


def parse_script(command: Sequence[str]) -> Script:
    """Read an argv as a script; raises ``ScriptError`` for a step it cannot read."""
    script = Script()
    for step in _steps(command):
        if not step:
            continue
        verb, args = step[0], step[1:]
        if verb == "echo":
            if args[-1:] == [">&2"]:
                script.stderr += (" ".join(args[:-1]) + "\n").encode()
            else:
                script.stdout += (" ".join(args) + "\n").encode()
        elif verb == "stderr":
            script.stderr += (" ".join(args) + "\n").encode()
        elif verb == "spew":
            script.stdout += b"x" * int(_number(step, int))
        elif verb == "sleep":
            script.duration += float(_number(step, float))
        elif verb == "exit":
            script.exit_code = int(_number(step, int))
        elif verb == "false":
            script.exit_code = 1
        elif verb in ("oom", "hang", "vanish", "crash"):
            setattr(script, verb, True)
        if verb in FINAL_STEPS:
            break
    return script
