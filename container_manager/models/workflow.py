"""Jobs that wait for other jobs, and arrays of jobs made from one description.

``JobDependency`` is the through table of ``ContainerJob.depends_on``: the claim takes a job
only once every job it depends on is ``completed`` (``ContainerJobQuerySet.due``). Edges are
checked when they are written (``check_dependencies``): only a pending job may gain one, the
other job must exist, and no edge may close a cycle, since the jobs of a cycle would wait for
each other forever.

``JobArray`` groups the N jobs of an array (``array_index`` 0..N-1 on each job, which its
container sees as ``CM_ARRAY_INDEX``); its ``parallelism`` caps how many of them run at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from container_manager.states import JobStatus

#: How many edges one job may have in either direction: enough for any workflow written by
#: hand, and a bound on what one validation reads.
MAX_DEPENDENCIES = 1000


class JobDependency(models.Model):
    """``job`` may start only after ``depends_on`` has completed."""

    job = models.ForeignKey(
        "container_manager.ContainerJob", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    depends_on = models.ForeignKey(
        "container_manager.ContainerJob", on_delete=models.CASCADE, related_name="+"
    )

    class Meta:
        verbose_name = "job dependency"
        verbose_name_plural = "job dependencies"
        constraints = [
            # Also the index through which the claim finds a job's dependencies.
            models.UniqueConstraint(fields=["job", "depends_on"], name="cm_dependency_unique"),
            models.CheckConstraint(condition=~Q(job=F("depends_on")), name="cm_dependency_not_self"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} after job {self.depends_on_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        with transaction.atomic():
            if self._state.adding:
                check_dependencies(self.job_id, [self.depends_on_id])
            super().save(*args, **kwargs)


def _ids(field: str, values: Iterable[Any]) -> list[int]:
    """The ids of ``values`` (jobs or ids); ``ValidationError`` for anything else."""
    from container_manager.models.job import ContainerJob

    ids = []
    for value in values:
        if isinstance(value, ContainerJob):
            if value.pk is None:
                raise ValidationError({field: f"{field}: save job {value} first"})
            value = value.pk
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError({field: f"{field} must list jobs or job ids, not {type(value).__name__}"})
        ids.append(value)
    return ids


def check_dependencies(job_id: int | None, depends_on: Iterable[Any]) -> list[int]:
    """Check new edges "job ``job_id`` depends on each of ``depends_on``"; return their ids.

    ``job_id`` None is a job about to be created (it has no dependents, so no cycle through
    it). Raises ``ValidationError`` on ``depends_on`` naming the rule: unknown jobs, a job
    that is no longer pending, a job depending on itself, or an edge that closes a cycle.
    """
    from container_manager.models.job import ContainerJob

    ids = sorted(set(_ids("depends_on", depends_on)))
    if not ids:
        return ids
    if len(ids) > MAX_DEPENDENCIES:
        raise ValidationError({"depends_on": f"a job may depend on at most {MAX_DEPENDENCIES} jobs"})
    if job_id is not None and job_id in ids:
        raise ValidationError({"depends_on": f"job {job_id} cannot depend on itself"})
    found = set(ContainerJob.objects.filter(pk__in=ids).values_list("pk", flat=True))
    unknown = [str(pk) for pk in ids if pk not in found]
    if unknown:
        raise ValidationError({"depends_on": f"depends_on: there is no job {', '.join(unknown[:10])}"})
    if job_id is None:
        return ids
    jobs = ContainerJob.objects.filter(pk=job_id)
    if transaction.get_connection().in_atomic_block:
        # Held until the edges are written: a claim (which skips locked rows) cannot take the
        # job in between. Outside a transaction there is nothing to hold it for.
        jobs = jobs.select_for_update()
    status = jobs.values_list("status", flat=True).first()
    if status is None:
        raise ValidationError({"depends_on": f"there is no job {job_id}"})
    if status != JobStatus.PENDING:
        raise ValidationError(
            {"depends_on": f"job {job_id} is {status}: dependencies can be added only to pending jobs"}
        )
    cycle = _path_back(job_id, ids)
    if cycle:
        chain = " -> ".join(str(pk) for pk in [job_id, *cycle])
        raise ValidationError({"depends_on": f"this would make a cycle ({chain}): jobs would wait forever"})
    return ids


def _path_back(job_id: int, start: list[int]) -> list[int]:
    """A chain of dependencies from one of ``start`` back to ``job_id``, or [] when there is none.

    One query per level of the graph, over the edges of the jobs reached so far only.
    """
    if not JobDependency.objects.filter(depends_on_id=job_id).exists():
        return []  # nothing depends on this job: no path can come back to it
    parent: dict[int, int | None] = dict.fromkeys(start)
    frontier = set(start)
    while frontier:
        edges = JobDependency.objects.filter(job_id__in=frontier).values_list("job_id", "depends_on_id")
        frontier = set()
        for child, dep in edges:
            if dep in parent:
                continue
            parent[dep] = child
            if dep == job_id:
                path = [dep]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])  # type: ignore[arg-type]
                return list(reversed(path))
            frontier.add(dep)
    return []


class JobArray(models.Model):
    """N jobs made from one description, told apart by their ``array_index`` (0..N-1)."""

    name = models.CharField(max_length=200, blank=True, default="", db_default="")
    size = models.PositiveIntegerField(help_text="Number of jobs in the array.")
    parallelism = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many of the array's jobs run at once; empty = no cap."
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=150, blank=True, default="", db_default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(size__gte=1), name="cm_array_size_positive"),
            models.CheckConstraint(
                condition=Q(parallelism__isnull=True) | Q(parallelism__gte=1),
                name="cm_array_parallelism_positive",
            ),
        ]

    def __str__(self) -> str:
        label = f" ({self.name})" if self.name else ""
        return f"array {self.pk}{label} of {self.size}"

    def status_counts(self) -> dict[str, int]:
        """How many of the array's jobs are in each status (every status present), in one query."""
        counts = dict.fromkeys((s.value for s in JobStatus), 0)
        rows = self.jobs.order_by().values("status").annotate(n=Count("pk"))  # type: ignore[attr-defined]
        for row in rows:
            counts[row["status"]] = row["n"]
        return counts

    def summary(self) -> str:
        """One line: ``array 3 (render) of 10: 4 completed, 2 running, 4 pending``."""
        parts = [f"{n} {status}" for status, n in self.status_counts().items() if n]
        cap = f", at most {self.parallelism} at once" if self.parallelism else ""
        return f"{self}{cap}: {', '.join(parts) or 'no jobs left'}"


def _merge(errors: dict[str, list[str]], exc: ValidationError) -> None:
    for field, messages in exc.message_dict.items():
        errors.setdefault(field, []).extend(messages)


def prepare_with_dependencies(
    job: Any, depends_on: Any, errors: dict[str, list[str]] | None = None
) -> list[int]:
    """Validate a new job and the dependencies it will have; raise every error at once (with
    ``errors`` already found), or return the dependencies' ids."""
    errors = dict(errors or {})
    ids: list[int] = []
    try:
        ids = check_dependencies(None, depends_on)
    except ValidationError as exc:
        _merge(errors, exc)
    try:
        job.prepare_for_insert()
    except ValidationError as exc:
        _merge(errors, exc)
    if errors:
        raise ValidationError(errors)
    return ids


def create_with_dependencies(manager: Any, fields: dict[str, Any]) -> Any:
    """``ContainerJob.objects.create(depends_on=...)``: the job and its edges in one transaction."""
    fields = dict(fields)
    depends_on = fields.pop("depends_on") or ()
    job = manager.model(**fields)
    ids = prepare_with_dependencies(job, depends_on)
    with transaction.atomic(using=manager.db):
        job.save(using=manager.db)
        JobDependency.objects.bulk_create(JobDependency(job_id=job.pk, depends_on_id=pk) for pk in ids)
    return job


def create_array(
    manager: Any, size: Any, *, parallelism: Any, depends_on: Any, fields: dict[str, Any]
) -> JobArray:
    """``ContainerJob.objects.create_array``: one job validated, ``size`` copies of it inserted."""
    from container_manager.conf import get_policy
    from container_manager.models.job import ContainerJob

    errors: dict[str, list[str]] = {}
    limit = get_policy().max_array_size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= limit:
        errors["array_size"] = [f"an array has 1 to {limit} jobs (MAX_ARRAY_SIZE); got {size!r}"]
    if parallelism is not None and (
        isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1
    ):
        errors["parallelism"] = [f"parallelism must be a whole number >= 1 (or None); got {parallelism!r}"]
    for name in ("array", "array_index", "array_size"):
        if name in fields:
            errors.setdefault(name, []).append(f"{name} is set by create_array(); leave it out")
    first = ContainerJob(**{k: v for k, v in fields.items() if k not in errors})
    first.array_index, first.array_size = 0, size if "array_size" not in errors else 1
    ids = prepare_with_dependencies(first, depends_on, errors)
    with transaction.atomic(using=manager.db):
        array = JobArray.objects.create(
            name=first.name, size=size, parallelism=parallelism, created_by=first.created_by
        )
        values = {f.attname: getattr(first, f.attname) for f in ContainerJob._meta.concrete_fields}
        values.pop("id")
        values.update(array_id=array.pk, array_size=size)
        jobs = manager.bulk_create(
            [ContainerJob(**{**values, "array_index": index}) for index in range(size)], batch_size=500
        )
        if ids:
            JobDependency.objects.bulk_create(
                (JobDependency(job_id=job.pk, depends_on_id=pk) for job in jobs for pk in ids),
                batch_size=1000,
            )
    return array


def check_new_edges(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """``m2m_changed`` receiver of ``ContainerJob.depends_on``: ``add()`` and ``set()`` are checked
    like ``create(depends_on=...)``, inside their transaction, before any edge is written."""
    if action != "pre_add" or not pk_set:
        return
    if not reverse:
        check_dependencies(instance.pk, pk_set)
        return
    # job.dependents.add(other, ...): each other job gains a dependency on this one.
    for other in sorted(pk_set):
        check_dependencies(other, [instance.pk])
