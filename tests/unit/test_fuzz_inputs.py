"""Random values of every type in every user-editable field, at every entry point that takes them:
the answer is a clear error (naming a field) or a valid row, never a traceback.

"Valid row" is checked the strong way: a row that was accepted passes the launch-time check
(``launch_settings``), so nothing the entry points accept can fail the reconciler later.
"""

from __future__ import annotations

import io
import json
import math
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from container_manager.conf import get_policy
from container_manager.exceptions import JobStateError
from container_manager.jobrules import launch_settings
from container_manager.models import (
    USER_EDITABLE_FIELDS,
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
)

pytestmark = pytest.mark.django_db

#: FUZZ_EXAMPLES=2000 for a longer hunt; the suite's default keeps it to seconds.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Any Python value a caller might pass: every JSON type, non-finite and huge numbers, bytes,
#: sets, dates, unpaired surrogates and NUL bytes, nested containers.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e400, 1e12, -0.0, 5e-324]),
    st.text(max_size=30),
    st.text(st.characters(categories=["Cs", "Cc", "Nd", "Zs"]), max_size=8),
    st.binary(max_size=8),
    st.datetimes(timezones=st.just(UTC)),
    st.dates(),
    # Quiet NaN only: Django's own attribute setters compare values, which a signalling NaN refuses.
    st.decimals(allow_nan=False, allow_infinity=True),
    st.sampled_from([Decimal("NaN"), Decimal("1e400"), Decimal("-0"), Decimal("2.5")]),
)
ANY_VALUE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
        st.frozensets(st.integers(), max_size=2),
    ),
    max_leaves=6,
)
#: Values that are close to right, so that the fuzz also reaches the rules behind the types.
PLAUSIBLE: dict[str, Any] = {
    "name": st.text(max_size=250),
    "image": st.sampled_from(["busybox", "python:3.12-slim", "ghcr.io/o/a:1", "Bad Image", "x:ταγ", ""]),
    "command": st.one_of(st.text(max_size=40), st.lists(st.text(max_size=8), max_size=4)),
    "override_environment": st.one_of(
        st.text(max_size=60),
        st.just("A=1\nB='two words'\nDB_PASS=x"),
        st.dictionaries(st.from_regex(r"[A-Z_]{1,6}", fullmatch=True), st.text(max_size=10), max_size=3),
    ),
    "secret_keys": st.one_of(st.text(max_size=20), st.just("A, DB_PASS"), st.lists(st.text(max_size=5))),
    "memory_limit": st.one_of(st.integers(-10, 5000), st.text(max_size=6)),
    "cpu_limit": st.one_of(st.floats(-1, 10), st.text(max_size=6)),
    "timeout_seconds": st.integers(-10, 10**7),
    "max_retries": st.integers(-5, 50),
    "retry_backoff_seconds": st.floats(-10, 1e13),
    "retry_backoff_max_seconds": st.floats(-10, 1e13),
    "retry_on": st.one_of(st.just("oom,lost"), st.text(max_size=20), st.lists(st.sampled_from(["oom", "x"]))),
    "priority": st.integers(-40000, 40000),
    "run_after": st.one_of(st.datetimes(), st.text(max_size=25), st.just("2030-01-01T00:00:00+00:00")),
}


def _field_values(names: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {}, optional={name: st.one_of(ANY_VALUE, PLAUSIBLE.get(name, ANY_VALUE)) for name in names}
    )


JOB_FIELDS = (
    *(f for f in USER_EDITABLE_FIELDS if f not in ("docker_host", "environment_template")),
    "docker_host_id",
    "environment_template_id",
    "created_by",
)


def _assert_clear(exc: ValidationError, model: Any) -> None:
    names = {f.name for f in model._meta.fields} | {"__all__"}
    assert set(exc.message_dict) <= names, exc.message_dict
    assert all(isinstance(m, str) and m for messages in exc.message_dict.values() for m in messages)


@pytest.fixture
def world(mock_host: ExecutorHost) -> dict[str, Any]:
    template = EnvironmentVariableTemplate.objects.create(name="t", environment_variables_text="T=1")
    return {"host": mock_host, "template": template}


@FUZZ
@given(values=_field_values(JOB_FIELDS), pin=st.booleans(), with_template=st.booleans())
def test_orm_create_gives_a_clear_error_or_a_launchable_row(
    world: dict[str, Any], values: dict[str, Any], pin: bool, with_template: bool
) -> None:
    if pin and "docker_host_id" not in values:
        values["docker_host"] = world["host"]
    if with_template and "environment_template_id" not in values:
        values["environment_template"] = world["template"]
    values.setdefault("image", "busybox")
    before = ContainerJob.objects.count()
    try:
        with transaction.atomic():
            job = ContainerJob.objects.create(**values)
    except ValidationError as exc:
        _assert_clear(exc, ContainerJob)
        assert ContainerJob.objects.count() == before
        return
    launch_settings(ContainerJob.objects.get(pk=job.pk), get_policy())


@FUZZ
@given(values=_field_values(JOB_FIELDS))
def test_full_clean_of_an_unsaved_job_never_raises_anything_else(values: dict[str, Any]) -> None:
    job = ContainerJob(image="busybox")
    for name, value in values.items():
        setattr(job, name, value)
    try:
        job.full_clean()
    except ValidationError as exc:
        _assert_clear(exc, ContainerJob)


@FUZZ
@given(values=_field_values(JOB_FIELDS))
def test_editing_a_saved_job_gives_a_clear_error_or_a_launchable_row(
    world: dict[str, Any], values: dict[str, Any]
) -> None:
    job = ContainerJob.objects.create(image="busybox", docker_host=world["host"])
    job = ContainerJob.objects.get(pk=job.pk)
    before = ContainerJob.objects.filter(pk=job.pk).values().get()
    for name, value in values.items():
        setattr(job, name, value)
    try:
        with transaction.atomic():
            job.save()
    except (ValidationError, JobStateError) as exc:
        if isinstance(exc, ValidationError):
            _assert_clear(exc, ContainerJob)
        else:
            assert "created_by" in str(exc)  # fixed once the job exists
        assert ContainerJob.objects.filter(pk=job.pk).values().get() == before
        return
    launch_settings(ContainerJob.objects.get(pk=job.pk), get_policy())


#: What a stored row holds for the launch-time check (relations and run_after are not re-read).
STORED_FIELDS = tuple(
    f for f in USER_EDITABLE_FIELDS if f not in ("name", "docker_host", "environment_template", "run_after")
)


@FUZZ
@given(values=st.fixed_dictionaries({}, optional={name: ANY_VALUE for name in STORED_FIELDS}))
def test_launch_check_of_any_stored_values_is_a_validation_error_or_settings(
    world: dict[str, Any], values: dict[str, Any]
) -> None:
    """What a row written by SQL may hold, as the ORM would read it back."""
    job = ContainerJob.objects.create(image="busybox", environment_template=world["template"])
    job = ContainerJob.objects.get(pk=job.pk)
    for name, value in values.items():
        setattr(job, name, value)
    try:
        launch_settings(job, get_policy())
    except ValidationError as exc:
        _assert_clear(exc, ContainerJob)


HOST_FIELDS = (
    "name",
    "executor_type",
    "connection_string",
    "executor_config",
    "is_active",
    "max_concurrent_jobs",
    "description",
)


@FUZZ
@given(
    values=st.fixed_dictionaries(
        {},
        optional={
            **{name: ANY_VALUE for name in HOST_FIELDS},
            "executor_type": st.one_of(ANY_VALUE, st.sampled_from(["docker", "mock", "cloudrun"])),
            "executor_config": st.one_of(
                ANY_VALUE,
                st.dictionaries(
                    st.sampled_from(["network", "api_timeout", "tls_ca_cert", "latency", "healthy", "x"]),
                    ANY_VALUE,
                    max_size=3,
                ),
            ),
        },
    )
)
def test_host_create_gives_a_clear_error_or_a_usable_row(values: dict[str, Any]) -> None:
    values.setdefault("name", "fuzz")
    try:
        with transaction.atomic():
            host = ExecutorHost.objects.create(**values)
    except ValidationError as exc:
        _assert_clear(exc, ExecutorHost)
        return
    host = ExecutorHost.objects.get(pk=host.pk)
    assert 0 < host.effective_max_concurrent_jobs <= get_policy().max_concurrent_jobs_cap
    try:
        host.get_executor()
    except Exception as exc:  # building may need this machine (files, libraries), never a crash
        from executors.exceptions import ConfigurationError

        assert isinstance(exc, ConfigurationError), repr(exc)
    finally:
        ExecutorHost.objects.filter(pk=host.pk).delete()


@FUZZ
@given(
    values=st.fixed_dictionaries(
        {},
        optional={n: ANY_VALUE for n in ("name", "environment_variables_text", "secret_keys", "description")},
    )
)
def test_template_create_gives_a_clear_error_or_a_usable_row(values: dict[str, Any]) -> None:
    values.setdefault("name", "fuzz")
    try:
        with transaction.atomic():
            template = EnvironmentVariableTemplate.objects.create(**values)
    except ValidationError as exc:
        _assert_clear(exc, EnvironmentVariableTemplate)
        return
    template.get_environment_variables_dict()
    EnvironmentVariableTemplate.objects.filter(pk=template.pk).delete()


# The admin's add form: whatever a browser can post ------------------------------------------------

FORM_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "1e12", "-1", "0", "5", "256", "0.5", "", " ", "abc"]),
)
ADMIN_FIELDS = [f for f in USER_EDITABLE_FIELDS if f not in ("run_after", "image")] + [
    "run_after_0",
    "run_after_1",
]


@pytest.fixture
def admin_browser(client: Client, settings: Any) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client.force_login(User.objects.create_superuser("root", password="x"))
    return client


@settings(
    max_examples=max(20, EXAMPLES // 3),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    form=st.fixed_dictionaries(
        {"image": FORM_TEXT | st.just("busybox")}, optional=dict.fromkeys(ADMIN_FIELDS, FORM_TEXT)
    )
)
def test_admin_add_form_answers_with_field_errors_or_a_launchable_row(
    admin_browser: Client, world: dict[str, Any], form: dict[str, str]
) -> None:
    data = {f"{p}-{k}": "0" for p in ("executions", "events") for k in ("TOTAL_FORMS", "INITIAL_FORMS")}
    if "docker_host" in form:
        form["docker_host"] = str(world["host"].pk) if form["docker_host"] else ""
    if "environment_template" in form:
        form["environment_template"] = str(world["template"].pk) if form["environment_template"] else ""
    data.update({k: v.replace("\x00", "") for k, v in form.items()})  # a browser cannot send NUL
    before = ContainerJob.objects.count()
    response = admin_browser.post(reverse("admin:container_manager_containerjob_add"), data)
    assert response.status_code in (200, 302), response.status_code
    if response.status_code == 200:
        assert response.context["adminform"].form.errors
        assert ContainerJob.objects.count() == before
        return
    launch_settings(ContainerJob.objects.order_by("-id")[0], get_policy())


# manage_jobs submit --file: whatever a JSON line can hold -------------------------------------------

JSON_VALUE = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(),
        st.text(max_size=20),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
SUBMIT = ("name", "command", "host", "template", "env", "secret_keys", "memory_limit", "cpu_limit")
SUBMIT += ("timeout_seconds", "max_retries", "retry_backoff_seconds", "retry_backoff_max_seconds")
SUBMIT += ("retry_on", "priority", "run_after", "unknown_field")


@FUZZ
@given(
    specs=st.lists(
        st.fixed_dictionaries(
            {"image": JSON_VALUE | st.just("busybox")},
            optional={
                **{name: JSON_VALUE | PLAUSIBLE.get(name, JSON_VALUE) for name in SUBMIT},
                "host": JSON_VALUE | st.just("mock-1"),
                "template": JSON_VALUE | st.just("t"),
                "env": JSON_VALUE | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
            },
        ),
        min_size=1,
        max_size=3,
    )
)
def test_submit_file_answers_with_a_one_line_error_or_launchable_jobs(
    world: dict[str, Any], tmp_path: Path, specs: list[dict[str, Any]]
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(spec, default=str) for spec in specs) + "\n", encoding="utf-8")
    before = set(ContainerJob.objects.values_list("pk", flat=True))
    try:
        call_command("manage_jobs", "submit", "--file", str(path), stdout=io.StringIO(), stderr=io.StringIO())
    except CommandError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        assert set(ContainerJob.objects.values_list("pk", flat=True)) == before
        return
    created = ContainerJob.objects.exclude(pk__in=before)
    assert created.count() == len(specs)
    for job in created:
        launch_settings(job, get_policy())


def test_the_fuzz_reaches_valid_rows_too(world: dict[str, Any]) -> None:
    """A guard against strategies that only ever produce errors: the plain case is accepted."""
    job = ContainerJob.objects.create(
        image="busybox", docker_host=world["host"], run_after=datetime(2030, 1, 1, tzinfo=UTC)
    )
    assert launch_settings(job, get_policy()).image == "busybox"
