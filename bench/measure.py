"""What the benchmarks measure with: percentiles, CPU meters, and the daemon's instrumentation.

Shared by ``bench/throughput.py`` and ``bench/controlplane.py``.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _pid_cpu_seconds(pid: int | str, task: str | None = None) -> float:
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids_named(*names: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() in names:
                    found.append(int(entry))
        except OSError:
            continue
    return found


@dataclass
class CpuMeter:
    """Machine CPU use and the CPU seconds of this process and of dockerd/containerd over a phase."""

    busy: int = 0
    total: int = 0
    process: float = 0.0
    engine: float = 0.0
    result: dict[str, float] = field(default_factory=dict)

    def _engine(self) -> float:
        return sum(_pid_cpu_seconds(pid) for pid in _pids_named("dockerd", "containerd"))

    def start(self) -> None:
        self.busy, self.total = _cpu_jiffies()
        self.process = time.process_time()
        self.engine = self._engine()

    def stop(self, jobs: int) -> dict[str, float]:
        busy, total = _cpu_jiffies()
        self.result = {
            "machine_busy_percent": round(100.0 * (busy - self.busy) / max(1, total - self.total), 1),
            "bench_process_cpu_s_per_job": round((time.process_time() - self.process) / jobs, 4),
            "dockerd_containerd_cpu_s_per_job": round((self._engine() - self.engine) / jobs, 4),
        }
        return self.result


class Instrument:
    """Wall time per reconcile step split into executor calls, SQL, and the rest (``--profile``)."""

    VERBS = ("launch", "inspect", "logs", "remove", "stop")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.profilers: list[cProfile.Profile] = []

    def add(self, key: str, seconds: float) -> None:
        with self.lock:
            self.totals[key] += seconds
            self.counts[key] += 1

    def wrap_executor(self, executor: Any) -> None:
        """Time each verb; a verb called by another (``launch`` inspects) counts only in the outer one."""
        for verb in self.VERBS:
            original = getattr(executor, verb)

            def timed(*args: Any, __original: Callable[..., Any] = original, __verb: str = verb) -> Any:
                if getattr(self.local, "inside", False):
                    return __original(*args)
                self.local.inside = True
                started = time.perf_counter()
                try:
                    return __original(*args)
                finally:
                    self.local.inside = False
                    self.add(f"executor.{__verb}", time.perf_counter() - started)

            setattr(executor, verb, timed)

    def wrap_reconciler(self, reconciler: Any) -> None:
        from django.db import connection

        original = reconciler.reconcile

        def sql(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                self.add("sql", time.perf_counter() - started)

        def reconcile(job_id: int) -> Any:
            profiler = getattr(self.local, "profiler", None)
            if profiler is None:
                profiler = self.local.profiler = cProfile.Profile()
                with self.lock:
                    self.profilers.append(profiler)
            started = time.perf_counter()
            with connection.execute_wrapper(sql):
                profiler.enable()
                try:
                    return original(job_id)
                finally:
                    profiler.disable()
                    self.add("reconcile", time.perf_counter() - started)

        reconciler.reconcile = reconcile

    def hotspots(self, limit: int = 25) -> str:
        """The functions the workers spent most CPU in (cProfile, own time), as pstats prints them."""
        if not self.profilers:
            return ""
        out = io.StringIO()
        stats = pstats.Stats(self.profilers[0], stream=out)
        for profiler in self.profilers[1:]:
            stats.add(profiler)
        stats.strip_dirs().sort_stats("tottime").print_stats(limit)
        return out.getvalue()

    def report(self, jobs: int) -> dict[str, Any]:
        total = self.totals.get("reconcile", 0.0)
        executor = sum(v for k, v in self.totals.items() if k.startswith("executor."))
        rows = {
            key: {
                "calls": self.counts[key],
                "total_s": round(value, 3),
                "ms_per_job": round(1000 * value / jobs, 2),
            }
            for key, value in sorted(self.totals.items())
        }
        rows["python_and_locks (reconcile - executor - sql)"] = {
            "calls": self.counts.get("reconcile", 0),
            "total_s": round(total - executor - self.totals.get("sql", 0.0), 3),
            "ms_per_job": round(1000 * (total - executor - self.totals.get("sql", 0.0)) / jobs, 2),
        }
        return rows


def thread_cpu_snapshot() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each live thread of this process, by native id."""
    return {
        t.native_id: (t.name, _pid_cpu_seconds("self", str(t.native_id)))
        for t in threading.enumerate()
        if t.native_id is not None
    }


def thread_cpu(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds used since ``before`` by this process's threads, grouped by name less its index."""
    grouped: dict[str, float] = defaultdict(float)
    for native_id, (name, seconds) in thread_cpu_snapshot().items():
        group = name.rstrip("0123456789").rstrip("-") or name
        grouped[group] += seconds - before.get(native_id, (name, 0.0))[1]
    return {k: round(v, 3) for k, v in sorted(grouped.items(), key=lambda kv: -kv[1])}
