"""Every metric the daemon exports, defined once.

Names follow Prometheus conventions: ``container_manager_`` prefix, base units (seconds,
bytes), ``_total`` on counters, and only bounded labels (executor kind, host name, outcome,
reason, status; never a job id). ``zero_initialise()`` creates every known label set at
start-up, so dashboards and ``rate()`` see zeros instead of missing series.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from container_manager.states import ExecutionStatus, JobStatus, Reason

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600)

BUILD_INFO = Info("container_manager_build", "Version of the running container manager.", registry=REGISTRY)
ATTEMPTS_FINISHED = Counter(
    "container_manager_attempts_finished_total",
    "Attempts that ended, by executor kind, outcome (execution status) and reason.",
    ["executor", "outcome", "reason"],
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "container_manager_jobs_finished_total",
    "Jobs that reached a terminal status, by status and reason.",
    ["status", "reason"],
    registry=REGISTRY,
)
LAUNCHES = Counter(
    "container_manager_launches_total",
    "Containers started, by executor kind.",
    ["executor"],
    registry=REGISTRY,
)
RETRIES_SCHEDULED = Counter(
    "container_manager_retries_scheduled_total",
    "Failed attempts scheduled for another try, by reason.",
    ["reason"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "container_manager_queue_wait_seconds",
    "Time from job creation (or retry due time) to the attempt's container start.",
    ["executor"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "container_manager_run_duration_seconds",
    "Wall-clock run time of finished attempts.",
    ["executor", "outcome"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
DETECTION_LATENCY = Histogram(
    "container_manager_detection_latency_seconds",
    "Time from a container's exit to its attempt being recorded as finished in the database.",
    ["executor"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
LAUNCH_LATENCY = Histogram(
    "container_manager_launch_latency_seconds",
    "Duration of the executor's launch call (create + start).",
    ["executor"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RECONCILE_PASSES = Counter(
    "container_manager_reconcile_passes_total", "One-job reconcile steps run.", registry=REGISTRY
)
RECONCILE_ERRORS = Counter(
    "container_manager_reconcile_errors_total",
    "Reconcile steps that raised, by error class family.",
    ["kind"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "container_manager_reconcile_duration_seconds",
    "Duration of one-job reconcile steps.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "container_manager_work_queue_depth", "Job keys waiting in the work queue (ready now).", registry=REGISTRY
)
QUEUE_DELAYED = Gauge(
    "container_manager_work_queue_delayed", "Job keys scheduled for a later look.", registry=REGISTRY
)
EVENT_STREAM_RECONNECTS = Counter(
    "container_manager_event_stream_reconnects_total",
    "Reconnections of executor event streams, by host.",
    ["host"],
    registry=REGISTRY,
)
EVENTS_RECEIVED = Counter(
    "container_manager_events_received_total",
    "Executor events received, by host and kind.",
    ["host", "kind"],
    registry=REGISTRY,
)
EXECUTOR_ERRORS = Counter(
    "container_manager_executor_errors_total",
    "Executor calls that failed, by executor kind, verb and whether the error was transient.",
    ["executor", "verb", "transient"],
    registry=REGISTRY,
)
HOST_HEALTHY = Gauge(
    "container_manager_host_healthy",
    "1 when the host's last health check passed, else 0.",
    ["host"],
    registry=REGISTRY,
)
ORPHANS_REMOVED = Counter(
    "container_manager_orphans_removed_total",
    "Labelled containers with no live attempt that were removed.",
    ["host"],
    registry=REGISTRY,
)
LEADER = Gauge("container_manager_leader", "1 while this daemon holds leadership, else 0.", registry=REGISTRY)
HOSTS_OWNED = Gauge(
    "container_manager_hosts_owned",
    "Executor hosts this replica drives now (holds the lease of).",
    registry=REGISTRY,
)
HOST_LEASE_CHANGES = Counter(
    "container_manager_host_lease_changes_total",
    "Host leases this replica gained or lost (hand-overs, takeovers, expiries).",
    ["change"],
    registry=REGISTRY,
)
LAST_PASS = Gauge(
    "container_manager_last_resync_timestamp_seconds",
    "Unix time of the last completed full resync pass.",
    registry=REGISTRY,
)

RESYNC_INTERVAL = Gauge(
    "container_manager_resync_interval_seconds",
    "Configured seconds between full resync passes (alerts compare the last pass against it).",
    registry=REGISTRY,
)

SCHEDULE_TICKS = Counter(
    "container_manager_schedule_ticks_total",
    "Due schedule ticks, by outcome: created (a job), duplicate (another replica created it), "
    "forbidden (concurrency_policy=forbid and a run unfinished), missed (past "
    "starting_deadline_seconds, or overtaken by a later tick while nothing ran), invalid (the job "
    "would be refused), error.",
    ["outcome"],
    registry=REGISTRY,
)
SCHEDULE_LAG = Histogram(
    "container_manager_schedule_lag_seconds",
    "Time from a schedule's tick to the creation of its job.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)

EXECUTOR_KINDS = ("docker", "cloudrun", "mock")
TICK_OUTCOMES = ("created", "duplicate", "forbidden", "missed", "invalid", "error")
OUTCOMES = tuple(s.value for s in ExecutionStatus if s.is_terminal)
REASONS = tuple(r.value for r in Reason)
JOB_STATUSES = tuple(s.value for s in JobStatus if s.is_terminal)
VERBS = ("launch", "inspect", "stop", "logs", "remove", "list_managed", "watch")


def zero_initialise(hosts: Iterable[str] = ()) -> None:
    """Create every bounded label combination so each series exists from the first scrape."""
    from container_manager import __version__

    BUILD_INFO.info({"version": __version__})
    for executor in EXECUTOR_KINDS:
        LAUNCHES.labels(executor)
        QUEUE_WAIT.labels(executor)
        DETECTION_LATENCY.labels(executor)
        LAUNCH_LATENCY.labels(executor)
        for outcome in OUTCOMES:
            RUN_DURATION.labels(executor, outcome)
            for reason in REASONS:
                ATTEMPTS_FINISHED.labels(executor, outcome, reason)
        for verb in VERBS:
            for transient in ("true", "false"):
                EXECUTOR_ERRORS.labels(executor, verb, transient)
    for status in JOB_STATUSES:
        for reason in REASONS:
            JOBS_FINISHED.labels(status, reason)
    for reason in REASONS:
        RETRIES_SCHEDULED.labels(reason)
    for kind in ("executor_transient", "executor_permanent", "database", "internal"):
        RECONCILE_ERRORS.labels(kind)
    for change in ("gained", "lost"):
        HOST_LEASE_CHANGES.labels(change)
    for outcome in TICK_OUTCOMES:
        SCHEDULE_TICKS.labels(outcome)
    for host in hosts:
        EVENT_STREAM_RECONNECTS.labels(host)
        HOST_HEALTHY.labels(host)
        ORPHANS_REMOVED.labels(host)
