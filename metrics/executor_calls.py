"""What the executors' calls to their backends cost, read from the executors at scrape time.

Each executor counts, per verb, the requests it sent, the tries it repeated after a transient
error and the tries that failed (``Executor.counters()``, kept by ``executors._calls``). This
collector turns the counts of every executor in use into three counter families labelled by
executor kind, host and verb; all are bounded (hosts x a backend's fixed verbs). An executor
rebuilt after its host's configuration changed starts again from zero, which Prometheus reads
as a counter reset (``rate()`` and ``increase()`` handle it).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from executors import registry as executors

FAMILIES = (
    ("calls", "container_manager_executor_requests", "Requests the executors sent to their backends."),
    (
        "retries",
        "container_manager_executor_request_retries",
        "Requests the executors sent again after a transient error.",
    ),
    (
        "errors",
        "container_manager_executor_request_errors",
        "Requests that failed (not counting not-found and conflict answers, which the verbs expect).",
    ),
)
LABELS = ("executor", "host", "verb")


class ExecutorCallsCollector(Collector):
    def __init__(self, executors_in_use: Callable[[], Iterable[Any]] = executors.built) -> None:
        self.executors_in_use = executors_in_use

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(name, text, labels=LABELS) for _, name, text in FAMILIES]

    def collect(self) -> Iterator[Metric]:
        families = {field: CounterMetricFamily(name, text, labels=LABELS) for field, name, text in FAMILIES}
        for executor in self.executors_in_use():
            for verb, counts in sorted(executor.counters().items()):
                labels = [executor.kind, executor.name, verb]
                for field, family in families.items():
                    family.add_metric(labels, getattr(counts, field))
        yield from families.values()


_registered: weakref.WeakKeyDictionary[CollectorRegistry, ExecutorCallsCollector] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def register(registry: CollectorRegistry) -> ExecutorCallsCollector:
    """Register one collector on ``registry`` (idempotent: later calls return the first)."""
    with _lock:
        existing = _registered.get(registry)
        if existing is None:
            existing = _registered[registry] = ExecutorCallsCollector()
            registry.register(existing)
        return existing
