"""``bench/throughput.py`` still runs and prints what BENCHMARKS.md quotes.

A smoke test of the script's output format only: a benchmark is never a timed assertion.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.components import require
from tests.integration.reconciler_docker.support import REPO
from tests.support.dockerd import missing_requirements

# No Django test database here (subprocesses on their own SQLite files): the PostgreSQL pass skips it.
pytestmark = [pytest.mark.docker, pytest.mark.no_db]

BENCH = REPO / "bench" / "throughput.py"


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_bench_prints_both_throughputs_their_ratio_and_latencies(busybox_image: str) -> None:
    done = run_bench("--jobs", "3", "--concurrency", "1", "--pickup", "1", "--floor", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^1\s+raw docker-py loop\s+[\d.]+\s+[\d.]+\s+3\s", out, re.M), out
    assert re.search(r"^1\s+reconciler \(daemon\)\s+[\d.]+\s+[\d.]+\s+3\s.*\s[\d.]+$", out, re.M), out
    assert re.search(r"ratio reconciler/raw \d+\.\d\d", out), out
    for label in (
        "detection: container exit -> DB terminal",
        "insert -> start",
        "pickup: insert -> start",
        "floor: exit -> logs readable (Docker)",
        "floor: create + start calls (Docker)",
    ):
        assert re.search(rf"^{re.escape(label)}.*\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+$", out, re.M), (label, out)
    assert re.search(r"^above Docker's floor \(p50\): detection [+-]\d+ ms, pickup [+-]\d+ ms$", out, re.M), (
        out
    )


def test_bench_json_output(busybox_image: str) -> None:
    done = run_bench("--jobs", "2", "--concurrency", "1", "--pickup", "0", "--floor", "1", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["jobs"] == 2 and result["concurrency"] == 1 and result["database"] == "sqlite"
    assert result["ratio"] > 0 and result["leftover_containers"] == 0
    (only,) = result["rounds"]
    assert only["raw"]["succeeded"] == 2 and only["reconciler"]["succeeded"] == 2
    assert result["latency_ms"]["detection"]["n"] == 2
    assert set(result["latency_ms"]["detection"]) == {"n", "p50", "p90", "p99", "max"}
    assert (
        result["docker_floor_ms"]["exit_to_logs"]["n"] == 1 == result["docker_floor_ms"]["create_start"]["n"]
    )


def test_bench_on_dockerd_hosts_over_tls(busybox_image: str) -> None:
    missing = missing_requirements()
    require(not missing, f"what extra dockerd hosts need ({', '.join(missing)})")
    done = run_bench(
        "--jobs", "4", "--concurrency", "1", "--pickup", "0", "--floor", "0", "--tls-hosts", "2", "--json"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert len(result["hosts"]) == 2 and all(h.startswith("tcp://127.0.0.1:") for h in result["hosts"])
    (only,) = result["rounds"]
    assert only["raw"]["succeeded"] == 4 and only["reconciler"]["succeeded"] == 4
    # One slot per host: both hosts ran attempts, and only these four.
    spread = only["reconciler"]["attempts_per_host"]
    assert len(spread) == 2 and all(count >= 1 for count in spread.values()) and sum(spread.values()) == 4
    assert result["leftover_containers"] == 0
