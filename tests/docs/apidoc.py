"""Reading ``API.md``: its sections, fenced blocks, command lines and the tables of its Reference.

Pure text functions, so the checkers built on them can be tested on small made-up documents.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

API_MD = Path(__file__).resolve().parents[2] / "API.md"

#: The second-level headings of the document, in this order (the structure the reference follows).
SECTIONS = (
    "Overview",
    "Core Models",
    "Executor System",
    "Management Commands",
    "Python API",
    "Data Relationships",
    "Error Handling",
    "Integration Patterns",
    "Performance Guide",
    "Reference",
)

_FENCE_RE = re.compile(
    r"^(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S
)
_BACKTICKED_RE = re.compile(r"`([^`]+)`")
_SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
#: How the documented commands are started.
COMMAND_PREFIXES = (("container-manager",), ("python", "manage.py"), ("manage.py",), ("django-admin",))


def read_api_md() -> str:
    return API_MD.read_text(encoding="utf-8")


def _without_fences(text: str) -> str:
    """The text with fenced blocks blanked out (same length), so '#' lines in code are not headings."""
    return _FENCE_RE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def headings(text: str, level: int) -> list[tuple[str, int]]:
    """(title, offset) of every heading of exactly ``level``, outside fenced blocks."""
    pattern = re.compile(rf"^{'#' * level}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
    return [(m.group(1).strip(), m.start()) for m in pattern.finditer(_without_fences(text))]


def section(text: str, title: str, level: int = 2) -> str:
    """The body of the heading ``title`` up to the next heading of the same or a higher level."""
    clean = _without_fences(text)
    start_re = re.compile(rf"^{'#' * level}[ \t]+{re.escape(title)}[ \t]*$", re.M)
    match = start_re.search(clean)
    if match is None:
        raise KeyError(f"no {'#' * level} {title} heading")
    end_re = re.compile(rf"^#{{1,{level}}}[ \t]", re.M)
    end = end_re.search(clean, match.end())
    return text[match.end() : end.start() if end else len(text)]


@dataclass(frozen=True)
class Block:
    language: str
    body: str
    #: 1-based line of the opening fence.
    line: int


def fenced_blocks(text: str) -> Iterator[Block]:
    for match in _FENCE_RE.finditer(text):
        info = match.group("info").strip()
        language = info.split()[0].lower() if info else ""
        yield Block(language, match.group("body"), text.count("\n", 0, match.start()) + 1)


# Command lines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    #: the words after the program (``process_jobs --once``), shell-split.
    argv: tuple[str, ...]
    #: as written, for messages.
    text: str
    line: int


def _logical_lines(body: str) -> Iterator[tuple[int, str]]:
    """Shell lines with backslash continuations joined; (index of the first line, text)."""
    pending: list[str] = []
    start = 0
    for index, raw in enumerate(body.splitlines()):
        if not pending:
            start = index
        if raw.rstrip().endswith("\\"):
            pending.append(raw.rstrip()[:-1])
            continue
        pending.append(raw)
        yield start, " ".join(part.strip() for part in pending)
        pending = []
    if pending:
        yield start, " ".join(part.strip() for part in pending)


def _simple_commands(line: str) -> Iterator[list[str]]:
    """The simple commands of one shell line: split at | ; && || and redirections dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    current: list[str] = []
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
            continue
        if token in ("|", ";", "&&", "||", "&"):
            if current:
                yield current
            current = []
        elif token in (">", ">>", "<", "2>", "2>&1"):
            skip_next = token != "2>&1"
        else:
            current.append(token)
    if current:
        yield current


def _strip_env_assignments(words: list[str]) -> list[str]:
    index = 0
    while index < len(words) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[index]):
        index += 1
    return words[index:]


def command_lines(text: str) -> list[CommandLine]:
    """Every documented invocation of a Django command, from the shell blocks of ``text``."""
    found = []
    for block in fenced_blocks(text):
        if block.language not in _SHELL_LANGUAGES:
            continue
        for index, line in _logical_lines(block.body):
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if not line or line.startswith("#"):
                continue
            for words in _simple_commands(line):
                words = _strip_env_assignments(words)
                for prefix in COMMAND_PREFIXES:
                    if tuple(words[: len(prefix)]) == prefix:
                        found.append(CommandLine(tuple(words[len(prefix) :]), line, block.line + 1 + index))
                        break
    return found


# The Reference section -----------------------------------------------------------------------


def _cells(row: str) -> list[str]:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|"):
        row = row[:-1]
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row)]


def normalise_name(cell: str) -> str | None:
    """The name a Reference row documents: the first backticked word, without call syntax."""
    match = _BACKTICKED_RE.search(cell)
    if match is None:
        return None
    name = match.group(1).strip()
    if name.startswith("-"):
        return name.split()[0].split("=")[0]
    return re.split(r"[(\s\[=]", name, maxsplit=1)[0]


def tables(text: str) -> Iterator[tuple[str, list[list[str]]]]:
    """(header cells joined by '|', rows of cells) for every pipe table in ``text``."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if (
            line.lstrip().startswith("|")
            and index + 1 < len(lines)
            and re.match(r"^\s*\|?\s*:?-{3,}", lines[index + 1])
        ):
            header = _cells(line)
            rows = []
            index += 2
            while index < len(lines) and lines[index].lstrip().startswith("|"):
                rows.append(_cells(lines[index]))
                index += 1
            yield "|".join(header), rows
            continue
        index += 1


def reference_names(text: str) -> dict[tuple[str, str], set[str]]:
    """{(subject, kind): names} from the Reference section's tables.

    The subject is the ``###`` heading above a table (backticks removed), the kind its first
    header cell ("Field", "Method", "Option", ...), and the names the first backticked word
    of each row's first cell.
    """
    body = section(text, "Reference")
    result: dict[tuple[str, str], set[str]] = {}
    marks = headings(body, 3)
    for position, (title, offset) in enumerate(marks):
        end = marks[position + 1][1] if position + 1 < len(marks) else len(body)
        subject = title.replace("`", "").strip()
        for header, rows in tables(body[offset:end]):
            kind = header.split("|", 1)[0].strip()
            names = result.setdefault((subject, kind), set())
            for row in rows:
                name = normalise_name(row[0])
                if name is not None:
                    names.add(name)
    return result
