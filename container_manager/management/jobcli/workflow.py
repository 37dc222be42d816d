"""The workflow parts of ``submit``, ``list`` and ``show``: ``--after``, ``--array``,
``--parallelism``, and what a job's dependencies, array and schedule are.

Kept in one module so that the job sub-commands only call into it; ``schedule`` has its own.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from container_manager.management.jobcli.common import positive_int

# submit ---------------------------------------------------------------------------------------


def add_submit_arguments(submit: ArgumentParser, job_id: Any) -> None:
    submit.add_argument(
        "--after",
        type=job_id,
        action="append",
        default=[],
        metavar="ID",
        help="start only after job ID completed (repeatable); cancelled if it ends otherwise",
    )
    submit.add_argument(
        "--array",
        type=positive_int,
        metavar="N",
        help="create N jobs with array_index 0..N-1 (CM_ARRAY_INDEX, CM_ARRAY_SIZE in the container)",
    )
    submit.add_argument(
        "--parallelism",
        type=positive_int,
        metavar="K",
        help="with --array: at most K of them run at once (default: all)",
    )


def check_submit_options(options: dict[str, Any]) -> None:
    if options["parallelism"] is not None and options["array"] is None:
        raise CommandError("submit: --parallelism goes with --array")
    if options["array"] is not None and options["file"]:
        raise CommandError("submit: --array makes one array from the options; it does not take --file")


def dependency_ids(spec: dict[str, Any], where: str) -> list[int]:
    """The ``after`` ids of one submitted job (``--after`` or a JSON line's ``after``), checked."""
    from container_manager.models.workflow import check_dependencies

    after = spec.get("after") or []
    if not isinstance(after, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in after):
        raise CommandError(f"{where}: after: expected a list of job ids")
    try:
        return check_dependencies(None, after)
    except ValidationError as exc:
        raise CommandError(f"{where}: {' '.join(exc.messages)}") from None


def submit_array(job: Any, options: dict[str, Any]) -> Any:
    """``submit --array N``: the array of ``job``'s desired state; returns the ``JobArray``."""
    from container_manager.models import USER_EDITABLE_FIELDS, ContainerJob

    fields = {name: getattr(job, name) for name in USER_EDITABLE_FIELDS}
    return ContainerJob.objects.create_array(
        options["array"],
        parallelism=options["parallelism"],
        depends_on=options["after"],
        created_by=job.created_by,
        **fields,
    )


def save_dependencies(jobs: list[Any], ids: list[list[int]]) -> None:
    from container_manager.models import JobDependency

    JobDependency.objects.bulk_create(
        JobDependency(job_id=job.pk, depends_on_id=pk)
        for job, after in zip(jobs, ids, strict=True)
        for pk in after
    )


def created_array_line(array: Any) -> str:
    from django.db.models import Max, Min

    span = array.jobs.aggregate(first=Min("pk"), last=Max("pk"))
    return f"created {array}: jobs {span['first']} to {span['last']}"


# show and list --------------------------------------------------------------------------------

#: The keys ``workflow_fields`` adds to a job's JSON.
WORKFLOW_KEYS = frozenset({"depends_on", "array", "array_index", "array_size", "schedule", "scheduled_for"})


def prefetch(jobs: list[Any]) -> None:
    """Load the dependencies of many jobs in one query, for ``workflow_fields``."""
    from django.db.models import prefetch_related_objects

    prefetch_related_objects(jobs, "depends_on")


def workflow_fields(job: Any) -> dict[str, Any]:
    """What the JSON of a job says about its place in a workflow (an unsaved job has no edges yet)."""
    return {
        "depends_on": sorted(other.pk for other in job.depends_on.all()) if job.pk else [],
        "array": job.array_id,
        "array_index": job.array_index,
        "array_size": job.array_size,
        "schedule": job.schedule.name if job.schedule_id else None,
        "scheduled_for": job.scheduled_for.isoformat() if job.scheduled_for else None,
    }


def workflow_lines(job: Any) -> list[tuple[str, str]]:
    """(label, text) lines ``show`` prints: dependencies both ways, the array, the schedule."""
    lines = []
    depends = list(job.depends_on.order_by("pk").values_list("pk", "status"))
    if depends:
        lines.append(("depends on", ", ".join(f"{pk} ({status})" for pk, status in depends)))
    dependents = list(job.dependents.order_by("pk").values_list("pk", "status"))
    if dependents:
        lines.append(("dependents", ", ".join(f"{pk} ({status})" for pk, status in dependents)))
    if job.array_index is not None:
        where = f"index {job.array_index} of {job.array_size}"
        lines.append(("array", f"{where}; {job.array.summary()}" if job.array_id else where))
    if job.schedule_id:
        tick = f" (tick {job.scheduled_for.isoformat()})" if job.scheduled_for else " (run now)"
        lines.append(("schedule", f"{job.schedule.name}{tick}"))
    return lines


def array_of(value: Any) -> Any:
    from container_manager.models import JobArray

    array = JobArray.objects.filter(pk=value).first()
    if array is None:
        raise CommandError(f"--array: no job array {value}")
    return array
