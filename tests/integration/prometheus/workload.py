"""Seeds a database with one executor host and a mix of jobs for the end-to-end metrics test.

Run as a separate process (``python -m tests.integration.prometheus.workload --executor mock``)
against the daemon's own database, so the daemon finds the rows when it starts. Job starts
are spread over the observation window with ``run_after``, so Prometheus sees containers
running, finishing, failing, retrying and timing out while it scrapes. The commands are the
mock executor's script language, which the Docker test image also speaks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta

#: (name, command, extra fields). Each outcome the dashboard shows appears at least once.
KINDS: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("ok", "sh -c 'echo ok; sleep 1'", {}),
    ("fail", "sh -c 'sleep 1; exit 3'", {"max_retries": 1, "retry_backoff_seconds": 1}),
    ("slow", "sh -c 'echo slow; sleep 4'", {}),
    ("timeout", "hang", {"timeout_seconds": 2}),
    ("ok", "sh -c 'echo ok; sleep 2'", {}),
    ("oom", "oom", {"memory_limit": 16}),
)


def seed(executor: str, count: int, spread: float, image: str, instance: str) -> dict[str, object]:
    import django

    django.setup()
    from django.utils import timezone

    from container_manager.models import ContainerJob, ExecutorHost

    host = ExecutorHost.objects.create(
        name=f"e2e-{executor}",
        executor_type=executor,
        max_concurrent_jobs=4 if executor == "docker" else 10,
    )
    now = timezone.now()
    created = []
    for index in range(count):
        name, command, extra = KINDS[index % len(KINDS)]
        fields: dict[str, object] = {"memory_limit": 64, "cpu_limit": 0.5, **extra}
        job = ContainerJob.objects.create(
            name=f"{name}-{index}",
            image=image,
            command=command,
            docker_host=host,
            run_after=now + timedelta(seconds=spread * index / max(1, count)),
            **fields,
        )
        created.append(job.pk)
    return {"host": host.name, "jobs": created, "instance": instance}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executor", choices=["mock", "docker"], default="mock")
    parser.add_argument("--count", type=int, default=36)
    parser.add_argument("--spread", type=float, default=15.0, help="seconds over which starts are spread")
    parser.add_argument("--image", default="busybox:latest")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "container_manager.settings")
    result = seed(
        args.executor, args.count, args.spread, args.image, os.environ.get("CONTAINER_MANAGER_INSTANCE", "")
    )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
