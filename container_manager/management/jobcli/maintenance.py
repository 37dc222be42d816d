"""``cleanup``, ``purge`` and ``hosts``: orphaned containers, old rows, and the hosts."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.db import transaction
from django.utils import timezone

from container_manager.management.jobcli.common import Output, duration, positive_int
from container_manager.management.jobcli.registry import Subcommand, register


def cleanup_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--host", action="append", default=[], help="only this host (repeatable; default: all)"
    )
    parser.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    parser.add_argument("--json", action="store_true", help="JSON output")


def cleanup_run(out: Output, options: dict[str, Any]) -> None:
    from reconciler.orphans import remove_orphans

    removed = remove_orphans(host_names=options["host"], dry_run=options["dry_run"], progress=out.progress)
    if options["json"]:
        out.emit_json(removed)
        return
    verb = "would remove" if options["dry_run"] else "removed"
    for host, name in removed:
        out.line(f"{verb} {name} on {host}")
    out.line(f"{len(removed)} orphan container(s) {verb}")


def purge_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--older-than", type=duration, required=True, help="finished longer ago than this, e.g. 30d, 12h"
    )
    parser.add_argument(
        "--status",
        choices=["completed", "failed", "timeout", "cancelled"],
        action="append",
        help="only this terminal status (repeatable; default: all four)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only count")
    parser.add_argument(
        "--batch-size", type=positive_int, default=1000, help="rows per transaction (default: 1000)"
    )
    parser.add_argument("--json", action="store_true", help="JSON output")


def purge_run(out: Output, options: dict[str, Any]) -> None:
    from container_manager.models import ContainerJob

    cutoff = timezone.now() - options["older_than"]
    jobs = ContainerJob.objects.terminal().filter(finished_at__lt=cutoff)
    if options["status"]:
        jobs = jobs.filter(status__in=options["status"])
    total = jobs.count()
    deleted = 0
    if not options["dry_run"]:
        while True:
            batch = list(jobs.order_by("id").values_list("id", flat=True)[: options["batch_size"]])
            if not batch:
                break
            with transaction.atomic():
                ContainerJob.objects.filter(pk__in=batch).delete()
            deleted += len(batch)
            out.progress(deleted, total, "purging")
    if options["json"]:
        out.emit_json({"matched": total, "deleted": deleted, "dry_run": options["dry_run"]})
    elif options["dry_run"]:
        out.line(f"{total} finished job(s) older than {options['older_than']} would be deleted")
    else:
        out.line(f"deleted {deleted} finished job(s) older than {options['older_than']}")


def hosts_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="run a health check on each active host first")
    parser.add_argument("--json", action="store_true", help="JSON output")


def hosts_run(out: Output, options: dict[str, Any]) -> None:
    from django.utils import timezone

    from container_manager.models import ExecutorHost, LeaderLease

    hosts = list(ExecutorHost.objects.with_running_count().order_by("name"))
    if options["check"]:
        for host in hosts:
            if host.is_active:
                host.health_check()
    # Which replica drives each host: the live host lease ("<lease>:host:<pk>"), if any.
    leases = {
        int(lease.name.rsplit(":", 1)[1]): lease
        for lease in LeaderLease.objects.filter(name__regex=r":host:[0-9]+$", expires_at__gt=timezone.now())
    }
    data = [
        {
            "name": h.name,
            "type": h.executor_type,
            "active": h.is_active,
            "health": h.health_status,
            "last_health_check": h.last_health_check,
            "running": getattr(h, "running_jobs", 0),
            "max_concurrent_jobs": h.effective_max_concurrent_jobs,
            "message": h.health_message,
            "owner": leases[h.pk].holder if h.pk in leases else None,
            "lease_expires_at": leases[h.pk].expires_at if h.pk in leases else None,
        }
        for h in hosts
    ]
    if options["json"]:
        out.emit_json(data)
        return
    out.line(f"{'NAME':<20} {'TYPE':<9} {'ACTIVE':<6} {'HEALTH':<9} {'LOAD':>7}  {'DRIVEN BY':<32} MESSAGE")
    for row in data:
        load = f"{row['running']}/{row['max_concurrent_jobs']}"
        owner = row["owner"] or "-"
        out.line(
            f"{row['name']:<20} {row['type']:<9} {row['active']!s:<6} {row['health']:<9} {load:>7}  "
            f"{owner:<32} {row['message']}"
        )


register(
    Subcommand(
        name="cleanup",
        help="remove labelled containers that belong to no live attempt",
        example="cleanup --dry-run",
        arguments=cleanup_arguments,
        run=cleanup_run,
    )
)
register(
    Subcommand(
        name="purge",
        help="delete finished jobs (and their attempts and history)",
        example="purge --older-than 30d --status completed --dry-run",
        arguments=purge_arguments,
        run=purge_run,
    )
)
register(
    Subcommand(
        name="hosts",
        help="list executor hosts with health and load",
        example="hosts --check",
        arguments=hosts_arguments,
        run=hosts_run,
    )
)
