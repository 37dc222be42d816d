"""Measurements the benchmarks share: percentiles, medians, and CPU seconds from /proc.

Benchmarks on a shared 2-core machine must say what else was busy: the whole machine's CPU
use, this process's and its threads', and the Docker engine's (dockerd and containerd) per job.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field


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


def _pid_cpu_seconds(pid: int | str, task: str | None = None, *, reaped: bool = False) -> float:
    """User + system CPU seconds of a process (or one of its threads); with ``reaped``, also
    those of its children that have exited (how a server's short-lived workers are counted)."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


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


def machine_snapshot() -> tuple[int, int, float]:
    """(busy jiffies, total jiffies, PostgreSQL's CPU seconds) now: diff two to see what a
    phase left of the machine, and what the database server spent on it."""
    busy, total = _cpu_jiffies()
    # A backend that exits (its client closed the connection) is counted in the postmaster's reaped children.
    return busy, total, sum(_pid_cpu_seconds(pid, reaped=True) for pid in _pids_named("postgres"))


def machine_use(before: tuple[int, int, float], after: tuple[int, int, float]) -> dict[str, float]:
    """Between two ``machine_snapshot()``s: the machine's busy percent and PostgreSQL's CPU seconds."""
    return {
        "machine_busy_percent": round(100.0 * (after[0] - before[0]) / max(1, after[1] - before[1]), 1),
        "postgres_cpu_seconds": round(after[2] - before[2], 3),
    }


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


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
