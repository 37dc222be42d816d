"""Type checks of the values given to model fields, before Django converts them.

Django's own field cleaning trusts its caller's types more than our callers deserve: it turns
a dict given as ``command`` into its repr, lets NaN and infinity through float fields, raises
``OverflowError`` for an infinite integer, and skips "empty" values (``[]``, ``{}``, None) of
``blank`` fields so that the INSERT fails instead. Every model's ``clean_fields`` runs these
checks first, so any value of any type ends as a ``ValidationError`` naming its field.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.expressions import DatabaseDefault
from django.db.models.fields import NOT_PROVIDED

from container_manager.conf import Policy
from container_manager.validation import NUMBER_RULES, _type_name, check_number

#: Largest id a row can have (BIGINT): larger numbers would overflow the database driver.
MAX_ID = 2**63 - 1

#: field name -> converter applied to a value that is not a string (e.g. a command as a list).
Converters = Mapping[str, Callable[[Any], Any]]


def _default(field: models.Field) -> Any:
    if field.default is NOT_PROVIDED:
        return None
    return field.default() if callable(field.default) else field.default


def _text_problem(field: str, value: str) -> str | None:
    if "\x00" in value:
        return f"{field} contains a NUL byte"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{field} contains characters that are not valid Unicode text (unpaired surrogates)"
    return None


def _check_id(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        return f"{field} must be the id of a row, not {_type_name(value)}"
    if isinstance(value, str):
        if not value.strip().isascii() or not value.strip().isdigit():
            return f"{field} must be the id of a row; got {value[:40]!r}"
        value = int(value)
    if not 1 <= value <= MAX_ID:
        return f"{field}: there is no row with that id"
    return None


def _empty(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def _check_json(field: str, value: Any) -> str | None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return f"{field} must be JSON: objects, lists, text, finite numbers, true/false and null"
    return None


def check_field_types(
    instance: models.Model,
    exclude: set[str],
    policy: Policy,
    *,
    converters: Converters | None = None,
) -> tuple[dict[str, list[str]], set[str]]:
    """Check and normalise ``instance``'s field values in place.

    Returns the errors by field, and the fields whose cleaning is complete (numbers: range
    included), which Django's own ``clean_fields`` must then skip.
    """
    converters = converters or {}
    errors: dict[str, list[str]] = {}
    done: set[str] = set()
    for field in instance._meta.concrete_fields:
        name = field.name
        if name in exclude:
            continue
        attname = field.attname
        value = getattr(instance, attname)
        if isinstance(value, DatabaseDefault) or getattr(field, "auto_now", False):
            continue  # filled in by the database or at save time
        problem: str | None = None
        if field.null and not isinstance(field, models.CharField | models.TextField) and _empty(value):
            # A blank form field or "" from JSON means empty (Django's own cleaning skips it, and
            # the UPDATE then fails); other empty values ([], {}) are type errors below.
            value = None
            setattr(instance, attname, None)
        if isinstance(field, models.ForeignKey) or field.primary_key:
            cached = isinstance(field, models.ForeignKey) and field.is_cached(instance)
            related = field.get_cached_value(instance) if cached else None  # type: ignore[attr-defined]
            if related is not None and related.pk is None:
                problem = f"{name}: save the {related._meta.verbose_name} first"
            else:
                problem = _check_id(name, value)
        elif value is None and not field.null:
            # JSON null, a missing CLI option: the field's default (None where there is none).
            value = _default(field)
            setattr(instance, attname, value)
            if value is None:
                problem = f"{name} is required"
        elif value is None:
            pass
        elif name in NUMBER_RULES:
            try:
                setattr(instance, attname, check_number(name, value, policy))
            except ValidationError as exc:
                errors.setdefault(name, []).extend(exc.messages)
            done.add(name)
            continue
        elif isinstance(field, models.IntegerField | models.FloatField):
            problem = _check_plain_number(name, value, integer=isinstance(field, models.IntegerField))
        elif isinstance(field, models.CharField | models.TextField):
            if not isinstance(value, str) and name in converters:
                try:
                    value = converters[name](value)
                except ValidationError as exc:
                    errors.setdefault(name, []).extend(exc.messages)
                    continue
                setattr(instance, attname, value)
            if isinstance(value, str):
                problem = _text_problem(name, value)
            else:
                problem = f"{name} must be text, not {_type_name(value)}"
        elif isinstance(field, models.BooleanField):
            if not isinstance(value, bool | int | str) or value in ("", []):
                problem = f"{name} must be true or false, not {_type_name(value)}"
        elif isinstance(field, models.DateTimeField):
            if isinstance(value, str):
                problem = _text_problem(name, value)
            elif not isinstance(value, datetime.date):
                problem = f"{name} must be a date-time (ISO 8601 text), not {_type_name(value)}"
            elif not 1 < value.year < 9999:
                # Converting to UTC (or to the local time zone) would overflow.
                problem = f"{name} must be between the years 2 and 9998"
        elif isinstance(field, models.JSONField):
            problem = _check_json(name, value)
        if problem:
            errors.setdefault(name, []).append(problem)
    return errors, done | set(errors)


def _check_plain_number(field: str, value: Any, *, integer: bool) -> str | None:
    """Numbers without a policy range (machine-owned counters): finite, the right kind, 64-bit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{field} must be a number, not {_type_name(value)}"
    if isinstance(value, float) and not (value == value and abs(value) != float("inf")):
        return f"{field} must be a finite number"
    if integer and (isinstance(value, float) or abs(value) > MAX_ID):
        return f"{field} must be a whole number within the 64-bit range"
    return None


def clean_fields_checked(
    instance: models.Model,
    exclude: Any,
    policy: Policy,
    parent: Callable[[set[str]], None],
    *,
    converters: Converters | None = None,
    skip: set[str] | frozenset[str] = frozenset(),
) -> None:
    """The body of a model's ``clean_fields``: our checks, then Django's for what is left."""
    excluded = set(exclude or ()) | set(skip)
    errors, done = check_field_types(instance, excluded, policy, converters=converters)
    try:
        parent(excluded | done)
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)
