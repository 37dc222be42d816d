"""Every command line shown in API.md is accepted by the real command.

Each ``container-manager ...``/``python manage.py ...`` line of the document's shell blocks is
parsed by the command's own argument parser (so sub-commands, options and their values are
checked), and each option it uses must appear in the real command's ``--help``, produced by
running the installed ``container-manager`` script.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, get_commands, load_command_class

from tests.docs.apidoc import CommandLine, command_lines, read_api_md

DOCUMENTED = command_lines(read_api_md())


def _script() -> list[str]:
    """The installed console script, next to this interpreter (or the module behind it)."""
    script = Path(sys.executable).with_name("container-manager")
    if script.exists():
        return [str(script)]
    found = shutil.which("container-manager")
    return [found] if found else [sys.executable, "-m", "container_manager.cli"]


@functools.cache
def real_help(*words: str) -> str:
    """``container-manager WORDS --help`` as a user would run it."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "container_manager.settings")
    result = subprocess.run(
        [*_script(), *words, "--help"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, f"`{' '.join(words)} --help` failed: {result.stderr[-2000:]}"
    return result.stdout


def problems_with(command: CommandLine) -> list[str]:
    """Why the real command would refuse this line (empty when it accepts it)."""
    if not command.argv:
        return ["no sub-command"]
    name, args = command.argv[0], list(command.argv[1:])
    commands = get_commands()
    if name not in commands:
        return [f"there is no command {name!r}"]
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    try:
        parser.parse_args(args)
    except (CommandError, SystemExit) as exc:
        return [f"the parser refuses it: {exc}"]
    if commands[name] != "container_manager":
        return []
    # Our own commands: the options must also be in the help a user reads.
    words = [name]
    if name == "manage_jobs" and args:
        words.append(args[0])
        if args[0] == "schedule" and len(args) > 1:  # a sub-command with actions of its own
            words.append(args[1])
    text = real_help(*words)
    return [
        f"{option} is not in `{' '.join(words)} --help`"
        for option in (arg.split("=", 1)[0] for arg in args if arg.startswith("--"))
        if option not in text
    ]


def test_the_document_shows_both_commands_and_every_manage_jobs_action() -> None:
    used = {c.argv[0] for c in DOCUMENTED if c.argv}
    assert {"process_jobs", "manage_jobs", "migrate"} <= used
    parser = load_command_class("container_manager", "manage_jobs").create_parser("manage.py", "manage_jobs")
    actions = next(a for a in parser._actions if a.dest == "action").choices or {}
    shown = {c.argv[1] for c in DOCUMENTED if c.argv[:1] == ("manage_jobs",) and len(c.argv) > 1}
    assert set(actions) <= shown, f"manage_jobs actions without an example: {set(actions) - shown}"


@pytest.mark.parametrize("command", DOCUMENTED, ids=[f"line{c.line}" for c in DOCUMENTED])
def test_documented_command_line_is_accepted(command: CommandLine) -> None:
    assert not problems_with(command), f"API.md line {command.line}: {command.text}"


# The checker itself ---------------------------------------------------------------------------


def test_command_lines_are_extracted_from_shell_blocks_only() -> None:
    doc = """
```bash
# a comment
DATABASE_URL=postgres://db/jobs container-manager process_jobs --workers 2 \\
    --host a --host b
python manage.py manage_jobs list --json | jq '.[0]'
pip install . && container-manager migrate
container-manager manage_jobs logs 7 --tail 5 > out.txt
```

```python
call_command("process_jobs", "--nope")
```

```text
container-manager process_jobs --ignored
```
"""
    assert [c.argv for c in command_lines(doc)] == [
        ("process_jobs", "--workers", "2", "--host", "a", "--host", "b"),
        ("manage_jobs", "list", "--json"),
        ("migrate",),
        ("manage_jobs", "logs", "7", "--tail", "5"),
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("process_jobs", "--workers", "2"), None),
        (("process_jobs", "--no-such-option"), "refuses"),
        (("process_jobs", "--workers", "0"), "refuses"),
        (("manage_jobs", "explode"), "refuses"),
        (("manage_jobs", "purge", "--dry-run"), "refuses"),  # --older-than is required
        (("no_such_command",), "no command"),
    ],
)
def test_the_checker_refuses_what_the_real_command_refuses(
    argv: tuple[str, ...], expected: str | None
) -> None:
    found = problems_with(CommandLine(argv, " ".join(argv), 1))
    if expected is None:
        assert found == []
    else:
        assert found and expected in found[0], found


def test_the_checker_reads_the_real_help() -> None:
    text = real_help("manage_jobs", "submit")
    assert "--max-retries" in text and "--image" in text
