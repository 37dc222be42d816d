"""Where the daemon's time goes (``bench/throughput.py --profile``).

Wall time per reconcile step split into executor calls, SQL and the rest, and the workers'
cProfile hotspots. The profiler slows the daemon: compare ratios without it.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any


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
                profiler = self.local.profiler = cProfile.Profile(time.thread_time)
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
