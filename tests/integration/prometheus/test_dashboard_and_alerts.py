"""End to end: a real Prometheus scrapes a running daemon while real jobs run, then every
dashboard panel query and every alert expression is evaluated through Prometheus' HTTP API.

A panel must parse and return data; an alert expression must parse and evaluate (it usually
returns nothing: nothing is wrong). ``promtool`` checks the shipped rules and config and a
live scrape. The static checks at the end keep the dashboard provisionable and every alert
documented.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.components import binary_available, require
from tests.integration.prometheus.conftest import DEPLOY, Daemon, Prometheus, http_get, wait_for

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "container-manager.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"

#: What Grafana would put in place of its variables: every instance, a window that holds
#: enough 1 s scrapes for rate() while the test is young.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "5s",
    "$__range": "1m",
    "$instance": ".*",
    "${instance}": ".*",
    "$host": ".*",
    "${host}": ".*",
}
METRIC_RE = re.compile(r"\bcontainer_manager_[a-z0-9_]+")

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, variables substituted."""
    out = []
    for panel in load_dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable in sorted(SUBSTITUTIONS, key=len, reverse=True):
                expr = expr.replace(variable, SUBSTITUTIONS[variable])
            assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
            out.append((panel["title"], expr))
    return out


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    require(binary_available("promtool"), "promtool")
    return subprocess.run(
        [shutil.which("promtool") or "promtool", *args], input=stdin, capture_output=True, timeout=60
    )


# With the daemon and Prometheus running -------------------------------------------------


@pytest.fixture(scope="module")
def observed(prometheus: Prometheus, daemon: Daemon) -> Prometheus:
    """Prometheus once it has scraped the daemon while jobs completed, failed, retried and timed out."""
    conditions = {
        "ten scrapes": "count_over_time(container_manager_build_info[5m])",
        "completed attempts": 'sum(container_manager_attempts_finished_total{outcome="completed"})',
        "failed attempts": 'sum(container_manager_attempts_finished_total{outcome="failed"})',
        "timed-out attempts": 'sum(container_manager_attempts_finished_total{outcome="timeout"})',
        "retries": "sum(container_manager_retries_scheduled_total)",
        "running attempts seen": "max_over_time(sum(container_manager_host_running_attempts)[5m:1s])",
        "executor events": "sum(container_manager_events_received_total)",
    }
    minimum = {"ten scrapes": 10.0}
    missing: list[str] = []

    def ready() -> bool:
        missing[:] = [
            what for what, expr in conditions.items() if prometheus.value(expr) < minimum.get(what, 1)
        ]
        if daemon.proc.poll() is not None:
            pytest.fail(f"the daemon exited with {daemon.proc.returncode}:\n{daemon.log.read_text()[-4000:]}")
        return not missing

    try:
        wait_for(ready, 60, "Prometheus to see the workload")
    except pytest.fail.Exception:
        pytest.fail(f"Prometheus never saw: {missing}\n{daemon.log.read_text()[-3000:]}")
    return prometheus


def test_every_panel_query_is_valid_and_returns_data(observed: Prometheus) -> None:
    empty, failed = [], []
    end = time.time()
    for title, expr in panel_targets():
        instant = observed.query(expr)
        if instant.get("status") != "success":
            failed.append((title, expr, instant.get("error")))
            continue
        ranged = observed.api("query_range", query=expr, start=str(end - 30), end=str(end), step="1")
        if ranged.get("status") != "success":
            failed.append((title, expr, ranged.get("error")))
            continue
        if not instant["data"]["result"] or not ranged["data"]["result"]:
            empty.append((title, expr))
    assert not failed, f"panel queries Prometheus rejected: {failed}"
    assert not empty, f"panel queries without data: {empty}"


def test_annotation_queries_and_variable_sources_are_valid(observed: Prometheus) -> None:
    """The alert annotations (empty while nothing fires) parse; each query variable's metric and
    label exist, so the drop-downs are not empty."""
    dashboard = load_dashboard()
    annotations = [a for a in dashboard["annotations"]["list"] if a.get("expr")]
    assert annotations, "no alert annotations"
    for annotation in annotations:
        assert observed.query(annotation["expr"]).get("status") == "success", annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        result = observed.query(f"count by ({match.group(2)}) ({match.group(1)})")
        assert result["data"]["result"], f"variable {variable['name']} would offer nothing"


def test_every_panel_uses_only_metrics_the_daemon_exports(daemon: Daemon) -> None:
    status, body = http_get(daemon.url + "/metrics")
    assert status == 200
    exported = {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    used = {name for _, expr in panel_targets() for name in METRIC_RE.findall(expr)}
    used |= {name for rule in alert_rules() for name in METRIC_RE.findall(rule["expr"])}
    assert used, "no container_manager_ metric found in the dashboard"
    assert sorted(used - exported) == []


def test_every_alert_expression_evaluates(observed: Prometheus) -> None:
    for rule in alert_rules():
        result = observed.query(rule["expr"])
        assert result.get("status") == "success", (rule["alert"], result)
    # Prometheus loaded the same file and has been evaluating it every second.
    loaded = observed.api("rules")
    assert loaded["status"] == "success"
    rules = {r["name"]: r for g in loaded["data"]["groups"] for r in g["rules"]}
    assert set(rules) == {r["alert"] for r in alert_rules()}
    unhealthy = {name: r.get("lastError") for name, r in rules.items() if r["health"] != "ok"}
    assert unhealthy == {}


def test_nothing_alarming_while_the_daemon_is_healthy(observed: Prometheus) -> None:
    """The alerts that must stay quiet here (the workload fails half its jobs on purpose)."""
    for name in (
        "ContainerManagerDaemonDown",
        "ContainerManagerLoopStalled",
        "ContainerManagerLeadershipWrong",
    ):
        (rule,) = (r for r in alert_rules() if r["alert"] == name)
        assert observed.query(rule["expr"])["data"]["result"] == [], name
    targets = observed.api("targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]


def test_a_live_scrape_passes_promtool_check_metrics(daemon: Daemon) -> None:
    status, body = http_get(daemon.url + "/metrics")
    assert status == 200
    checked = promtool("check", "metrics", stdin=body)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.strip() == b"" and checked.stderr.strip() == b""


def test_daemon_logs_are_json_lines_with_the_job_in_context(observed: Prometheus, daemon: Daemon) -> None:
    records = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.strip()]
    finished = [r for r in records if r.get("event") == "attempt finished"]
    assert finished and all(isinstance(r.get("job_id"), int) for r in finished)
    assert all({"level", "timestamp", "logger"} <= set(r) for r in records)


def test_daemon_probes_answer(daemon: Daemon) -> None:
    status, body = http_get(daemon.url + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = http_get(daemon.url + "/readyz")
    assert status == 200
    assert json.loads(body)["role"] == "leader"


# Static checks: no running process needed -----------------------------------------------


def test_promtool_accepts_the_shipped_rules_and_config() -> None:
    rules = promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout.decode() + rules.stderr.decode()
    config = promtool("check", "config", str(PROMETHEUS_YML))
    assert config.returncode == 0, config.stdout.decode() + config.stderr.decode()
    assert b"alerts.yml" in config.stdout + config.stderr


def test_every_alert_has_a_runbook_line_and_the_issue_list_is_covered() -> None:
    rules = alert_rules()
    for rule in rules:
        runbook = rule["annotations"].get("runbook", "")
        assert runbook and "\n" not in runbook.strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
    names = {r["alert"] for r in rules}
    for wanted in (
        "ContainerManagerDaemonDown",
        "ContainerManagerLoopStalled",
        "ContainerManagerJobsStuckPending",
        "ContainerManagerFailureRatioHigh",
        "ContainerManagerHostUnhealthy",
        "ContainerManagerEventStreamFlapping",
    ):
        assert wanted in names


def test_dashboard_is_provisionable_and_has_the_panels_asked_for() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
        assert panel.get("description"), panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Throughput",
        "Outcomes by reason",
        "Queue wait",
        "Run duration",
        "Detection latency",
        "Running attempts per host",
        "Reconcile errors",
        "Executor API errors",
        "Event-stream reconnects",
        "Host health",
        "Leader",
        "Failure ratio",
        "Unfinished jobs by status",
        "Finished jobs by status",
    ):
        assert wanted in titles
    assert {"instance", "host", "admin_url"} <= set(variables)
    host_panels = [p for p in dashboard["panels"] if "by (host" in json.dumps(p.get("targets", []))]
    assert host_panels and all('host=~\\"$host\\"' in json.dumps(p["targets"]) for p in host_panels)
    links = [
        link["url"]
        for p in dashboard["panels"]
        for link in p.get("fieldConfig", {}).get("defaults", {}).get("links", [])
    ]
    assert any("/container_manager/containerjob/?status__exact=${__field.labels.status}" in u for u in links)
    assert any("/container_manager/executorhost/" in u for u in links)
    assert all(u.startswith("${admin_url}/") for u in links)
    assert dashboard["uid"] and "id" not in dashboard  # no instance-specific id: provisioning assigns one


def test_grafana_provisioning_files_point_at_the_dashboard() -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/container-manager.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
    assert DASHBOARD.exists()
