"""The stand-ins' script language (``executors.script``): one parser for the mock and the Cloud Run fake."""

from __future__ import annotations

from typing import Any

import pytest

from executors.script import ScriptError, parse_script
from tests.fakes.cloudrun import behaviour_from_argv

# What a script does ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), {}),
        (("true",), {}),
        (("python", "main.py"), {}),
        (("echo", "hello", "world"), {"stdout": b"hello world\n"}),
        (("stderr", "bad", "thing"), {"stderr": b"bad thing\n"}),
        (("sleep", "2.5"), {"duration": 2.5}),
        (("exit", "3"), {"exit_code": 3}),
        (("exit",), {"exit_code": 0}),
        (("false",), {"exit_code": 1}),
        (("oom",), {"oom": True}),
        (("hang",), {"hang": True}),
        (("vanish",), {"vanish": True}),
        (("spew", "5"), {"stdout": b"xxxxx"}),
        (
            ("sh", "-c", "echo a; stderr b; sleep 1; sleep 2; exit 4"),
            {"stdout": b"a\n", "stderr": b"b\n", "duration": 3.0, "exit_code": 4},
        ),
        (
            ("/bin/sh", "-c", "echo 'quoted words'; false; echo never"),
            {"stdout": b"quoted words\n", "exit_code": 1},
        ),
        (("sh", "-c", "exit 2; echo never"), {"exit_code": 2}),
        (("sh", "-c", "echo x;;  ; oom"), {"stdout": b"x\n", "oom": True}),
        (("sh", "-c", "echo to stderr >&2; echo out"), {"stdout": b"out\n", "stderr": b"to stderr\n"}),
        (("crash",), {"crash": True}),
        (("sh", "-c", "sleep 1; crash; exit 3"), {"duration": 1.0, "crash": True}),
    ],
)
def test_parse_script(argv: tuple[str, ...], expected: dict[str, Any]) -> None:
    program = parse_script(argv)
    defaults = {
        "stdout": b"",
        "stderr": b"",
        "duration": 0.0,
        "exit_code": 0,
        "oom": False,
        "hang": False,
        "vanish": False,
        "crash": False,
    }
    for key, value in (defaults | expected).items():
        assert getattr(program, key) == value, key


@pytest.mark.parametrize(
    "argv",
    [("sleep", "soon"), ("exit", "1.5"), ("sleep", "-1"), ("sleep", "inf"), ("sh", "-c", "echo 'unbalanced")],
)
def test_a_script_that_cannot_be_read_is_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(ScriptError):
        parse_script(argv)


def test_the_cloud_run_fake_reads_the_same_script() -> None:
    argv = ["sh", "-c", "echo out; stderr err; echo more >&2; sleep 0.5; sleep 1; exit 3"]
    script, behaviour = parse_script(argv), behaviour_from_argv(argv)
    assert behaviour is not None
    assert (behaviour.duration, behaviour.exit_code) == (script.duration, script.exit_code) == (1.5, 3)
    assert behaviour.stdout == ["out"] and behaviour.stderr == ["err", "more"]
    for step in ("oom", "hang", "crash"):
        assert getattr(behaviour_from_argv([step]), step) is getattr(parse_script([step]), step) is True
