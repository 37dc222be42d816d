"""API.md's Reference lists exactly the public names of the code, in both directions.

The names are read from the code by introspection (model fields, methods and properties,
queryset methods, the real argument parsers of the management commands, the executor
interface, settings, signals, exceptions, metrics...), so a name added to the code shows up
here as "missing from API.md", and a documented name removed from the code as "not in the
code". The checker's own tests below show that both directions fail when they should.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from container_manager.conf import Policy
from container_manager.states import DEFAULT_RETRY_ON, TRANSITIONS, Reason
from tests.docs.apidoc import SECTIONS, headings, normalise_name, reference_names, section, tables
from tests.docs.apinames import Comparison, code_names, compare


def test_the_reference_lists_every_public_name_and_no_other(api_md: str) -> None:
    comparison = compare(code_names(), reference_names(api_md))
    assert comparison.ok, "\n" + comparison.report()


def test_the_document_follows_the_content_structure(api_md: str) -> None:
    assert [title for title, _ in headings(api_md, 1)] == ["API Reference"]
    assert [title for title, _ in headings(api_md, 2)] == list(SECTIONS)


def _table(text: str, first_header: str) -> list[list[str]]:
    found = [rows for header, rows in tables(text) if header.split("|")[0].strip() == first_header]
    assert len(found) == 1, f"expected one table starting with {first_header!r}, found {len(found)}"
    return found[0]


def test_the_transitions_table_is_the_status_machine(api_md: str) -> None:
    rows = _table(section(api_md, "Core Models"), "From")
    documented = [(normalise_name(row[0]), normalise_name(row[1])) for row in rows]
    allowed = {(source.value, target.value) for source, targets in TRANSITIONS.items() for target in targets}
    assert len(documented) == len(set(documented)), "a transition is listed twice"
    assert set(documented) == allowed


def test_the_failure_reasons_table_says_which_are_retried_by_default(api_md: str) -> None:
    rows = _table(section(api_md, "Core Models"), "Reason")
    documented = {normalise_name(row[0]): row[2].strip().startswith("yes") for row in rows}
    assert documented == {r.value: r in DEFAULT_RETRY_ON for r in Reason if r.value}


def _as_default(text: str) -> Any:
    text = text.strip().strip("`").strip('"')
    if text == "[]":
        return ()
    try:
        return float(text)
    except ValueError:
        return text


@pytest.mark.parametrize("title", ["Overview", "Reference"])
def test_the_settings_tables_give_the_real_defaults(api_md: str, title: str) -> None:
    text = section(section(api_md, title), "Settings", level=3)
    first = "Setting" if title == "Reference" else "Key"
    documented = {normalise_name(row[0]): _as_default(row[1]) for row in _table(text, first)}
    defaults = {name.upper(): value for name, value in vars(Policy()).items()}
    for name, value in defaults.items():
        expected = value if isinstance(value, str | tuple) else float(value)
        assert documented.get(name) == expected, f"{name}: API.md says {documented.get(name)!r}"


# The checker itself ---------------------------------------------------------------------------
# Each test changes one side (the document, or the code) and checks what that change adds to
# the comparison, so these tests hold whether or not the document is up to date.

Delta = dict[tuple[str, str], set[str]]


def _added(before: Comparison, after: Comparison) -> tuple[Delta, Delta]:
    def minus(new: Delta, old: Delta) -> Delta:
        result = {key: names - old.get(key, set()) for key, names in new.items()}
        return {key: names for key, names in result.items() if names}

    return minus(after.missing, before.missing), minus(after.stale, before.stale)


def _drop_row(text: str, cell: str) -> str:
    lines = [line for line in text.splitlines() if not line.startswith(f"| {cell} |")]
    assert len(lines) < len(text.splitlines()), f"no row starts with {cell}"
    return "\n".join(lines)


def test_the_checker_reports_a_name_the_document_lacks(api_md: str) -> None:
    code = code_names()
    before = compare(code, reference_names(api_md))
    after = compare(code, reference_names(_drop_row(api_md, "`--workers N`")))
    assert _added(before, after) == ({("process_jobs", "Option"): {"--workers"}}, {})
    assert "--workers" in after.report()


def test_the_checker_reports_a_documented_name_the_code_lacks(api_md: str) -> None:
    text = api_md.replace(
        "| `--once` | one pass, then exit |",
        "| `--once` | one pass, then exit |\n| `--turbo` | an option that never existed |",
    )
    code = code_names()
    before = compare(code, reference_names(api_md))
    after = compare(code, reference_names(text))
    assert _added(before, after) == ({}, {("process_jobs", "Option"): {"--turbo"}})
    assert not after.ok and "--turbo" in after.report()


def test_the_checker_reads_options_from_the_real_parser(api_md: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from container_manager.management.commands.process_jobs import Command

    documented = reference_names(api_md)
    before = compare(code_names(), documented)
    original = Command.add_arguments

    def add_arguments(self: Any, parser: argparse.ArgumentParser) -> None:
        original(self, parser)
        parser.add_argument("--brand-new-option", action="store_true")

    monkeypatch.setattr(Command, "add_arguments", add_arguments)
    after = compare(code_names(), documented)
    assert _added(before, after) == ({("process_jobs", "Option"): {"--brand-new-option"}}, {})


def test_the_checker_sees_new_model_methods_and_queryset_methods(
    api_md: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from container_manager.models import ContainerJob
    from container_manager.querysets import ContainerJobQuerySet

    documented = reference_names(api_md)
    before = compare(code_names(), documented)

    def brand_new_method(self: Any) -> None:
        """Pretend the model gained a method."""

    brand_new_method.__module__ = ContainerJob.__module__
    monkeypatch.setattr(ContainerJob, "brand_new_method", brand_new_method, raising=False)
    monkeypatch.setattr(ContainerJobQuerySet, "stuck", lambda self: self, raising=False)
    after = compare(code_names(), documented)
    assert _added(before, after) == (
        {("ContainerJob", "Method"): {"brand_new_method"}, ("ContainerJob.objects", "Method"): {"stuck"}},
        {},
    )


def test_the_reference_parser() -> None:
    doc = """# API Reference

## Overview

| Field | Type |
|---|---|
| `outside` | not in the Reference |

## Reference

### `Thing`

| Field | Type |
|---|---|
| `alpha` | CharField |
| `beta` (a note) | IntegerField |

| Method | Returns |
|---|---|
| `go(fast=True)` | `None` |

```text
### not a heading
| `nor` | a table row |
```

### thing run

| Option | Description |
|---|---|
| `--speed N` | how fast |
| `target` | positional |
"""
    assert reference_names(doc) == {
        ("Thing", "Field"): {"alpha", "beta"},
        ("Thing", "Method"): {"go"},
        ("thing run", "Option"): {"--speed", "target"},
    }


def test_every_python_block_is_executed_or_marked_for_docker_or_django6(api_md: str) -> None:
    """No silently skipped examples: the only markers before python blocks are the ones Sybil knows
    (docker: needs a daemon; django6: needs django.tasks)."""
    markers = re.findall(r"<!--\s*([\w-]+)", api_md)
    assert set(markers) <= {"docker", "django6", "invisible-code-block"}, set(markers)
