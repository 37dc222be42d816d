"""The deployment files: the systemd unit (``systemd-analyze``), the Dockerfile (a small linter
written here: no hadolint on these machines) and the lock it installs from, the compose stack
(``docker-compose config``, and its structure checked), and their Prometheus configuration
(``promtool``). Building and running the image and the unit for real is
``tests/integration/deploy/``.

Wherever a file passes arguments to ``process_jobs``, they are parsed with the command's real
argument parser, so a renamed option breaks this test rather than a deployment.
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.components import binary_available, require

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "container-manager.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "container-manager.env.example"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
COMPOSE = DEPLOY / "container" / "compose.yaml"
COMPOSE_PROMETHEUS = DEPLOY / "container" / "prometheus.yml"
LOCK = DEPLOY / "container" / "requirements.lock"
INSTALLED_BINARY = "/opt/container-manager/venv/bin/container-manager"


def process_jobs_args(args: list[str]) -> Any:
    """Parse ``args`` like ``container-manager process_jobs ARGS`` would (SystemExit on an error)."""
    from container_manager.management.commands.process_jobs import Command

    return Command().create_parser("container-manager", "process_jobs").parse_args(args)


def drain_seconds() -> float:
    from reconciler.daemon import Daemon

    return float(inspect.signature(Daemon.shutdown).parameters["timeout"].default)


# systemd ----------------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, every value of repeated keys kept in order."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require(binary_available("systemd-analyze"), "systemd-analyze")
    # verify wants ExecStart's binary to exist: point it at this checkout's console script.
    binary = Path(sys.executable).parent / "container-manager"
    assert binary.exists()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(binary)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for ignored, unparsable lines: any output at all is a finding.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, "exposure above 2.0:\n" + security.stdout[-3000:]


def test_the_unit_is_a_watched_notify_service_that_drains_before_it_is_killed() -> None:
    settings = unit_settings(UNIT.read_text())
    one = {key: values[-1] for key, values in settings.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure"
    watchdog = int(one["WatchdogSec"])
    assert watchdog >= 10, "several lease renewals fit in one watchdog period"
    assert int(one["TimeoutStopSec"]) > drain_seconds(), "systemd must not SIGKILL a draining daemon"
    assert one["KillSignal"] == "SIGTERM"
    assert one["User"] not in ("root", "0") and "DynamicUser" not in one
    assert one["SupplementaryGroups"] == "docker"
    assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict"
    families = one["RestrictAddressFamilies"].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families), "Docker socket and database reachable"
    assert "PrivateNetwork" not in one and "PrivateUsers" not in one
    exec_start = shlex.split(one["ExecStart"])
    assert exec_start[:2] == [INSTALLED_BINARY, "process_jobs"]
    assert one["EnvironmentFile"] == "/etc/container-manager/container-manager.env"


def test_the_environment_file_example_is_complete_and_its_arguments_parse() -> None:
    # deploy/README.md sources the file in a shell (set -a; . FILE) as well as systemd reading
    # it: read it the shell's way, which is the stricter of the two.
    script = f'set -a; . "{ENV_EXAMPLE}"; set +a; env -0'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env={})
    assert result.returncode == 0 and not result.stderr, result.stderr
    values = dict(item.split("=", 1) for item in result.stdout.split("\0") if "=" in item)
    assert {"DATABASE_URL", "DJANGO_SECRET_KEY", "CONTAINER_MANAGER_INSTANCE", "PROCESS_JOBS_ARGS"} <= set(
        values
    )
    assert values["DATABASE_URL"].startswith("postgres://")
    unit = unit_settings(UNIT.read_text())
    home = "/var/lib/" + unit["StateDirectory"][0]
    assert (
        values["CONTAINER_MANAGER_HOME"] == home and f"CONTAINER_MANAGER_HOME={home}" in unit["Environment"]
    )
    # systemd splits an unquoted $VAR of ExecStart on white space.
    options = process_jobs_args(values["PROCESS_JOBS_ARGS"].split())
    assert options.leader_election == "auto" and options.lease_seconds == 5.0
    assert "$PROCESS_JOBS_ARGS" in UNIT.read_text(), "the unit passes them on"


# Dockerfile -------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "dangling line continuation"
    return instructions


def lint_dockerfile(text: str) -> list[str]:
    """Problems found in ``text``; an empty list means it passes."""
    problems: list[str] = []
    instructions = dockerfile_instructions(text)
    stages = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    if not stages:
        return ["no FROM"]
    # Build arguments declared before the first FROM may name the base: judge their defaults.
    base_args = dict(args.partition("=")[::2] for word, args in instructions[: stages[0]] if word == "ARG")
    for index in stages:
        image = instructions[index][1].split()[0]
        reference = re.fullmatch(r"\$\{?(\w+)\}?", image)
        if reference:
            image = base_args.get(reference.group(1), "")
            if not image:
                problems.append(f"FROM {reference.group(0)}: no default before the first FROM")
                continue
        if image.startswith("--"):
            problems.append(f"FROM with options is not supported by this linter: {instructions[index][1]}")
            continue
        name, _, tag = image.partition("@")[0].rpartition(":")
        if "@sha256:" not in image and (not name or tag in ("", "latest") or not re.search(r"\d", tag)):
            problems.append(f"base image not pinned to a version: {image}")
    final = instructions[stages[-1] :]
    users = [args for word, args in final if word == "USER"]
    if not users:
        problems.append("the final stage runs as root (no USER)")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the final stage runs as root (USER {users[-1]})")
    for word, args in instructions:
        if word in ("ENTRYPOINT", "CMD"):
            try:
                value = json.loads(args)
            except ValueError:
                value = None
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                problems.append(f"{word} is not in exec form (a JSON array): {args}")
        if word == "HEALTHCHECK" and "CMD" in args:
            command = args.split("CMD", 1)[1].strip()
            if not command.startswith("["):
                problems.append(f"HEALTHCHECK CMD is not in exec form: {command}")
        if word == "ADD":
            problems.append(f"ADD (use COPY; never fetch URLs at build time): {args}")
        if word == "RUN" and re.search(r"\b(curl|wget)\b.*\|\s*(sh|bash)\b", args):
            problems.append(f"RUN pipes a download into a shell: {args}")
        if word == "RUN" and "sudo " in args:
            problems.append("sudo in RUN")
        if word == "MAINTAINER":
            problems.append("MAINTAINER is deprecated (use a LABEL)")
    if not any(word == "ENTRYPOINT" for word, _ in final):
        problems.append("no ENTRYPOINT in the final stage")
    if not any(word == "HEALTHCHECK" for word, _ in final):
        problems.append("no HEALTHCHECK in the final stage")
    return problems


def test_the_dockerfile_passes_the_linter() -> None:
    assert lint_dockerfile(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('FROM python\nUSER 1000\nENTRYPOINT ["x"]\nHEALTHCHECK CMD ["x"]\n', "not pinned"),
        ('FROM python:latest\nUSER 1000\nENTRYPOINT ["x"]\nHEALTHCHECK CMD ["x"]\n', "not pinned"),
        ('FROM python:3.11-slim\nENTRYPOINT ["x"]\nHEALTHCHECK CMD ["x"]\n', "runs as root"),
        ('FROM python:3.11-slim\nUSER root\nENTRYPOINT ["x"]\nHEALTHCHECK CMD ["x"]\n', "runs as root"),
        ('FROM python:3.11-slim\nUSER 1000\nENTRYPOINT x --y\nHEALTHCHECK CMD ["x"]\n', "exec form"),
        ('FROM python:3.11-slim\nUSER 1000\nENTRYPOINT ["x"]\nHEALTHCHECK CMD curl -f x\n', "exec form"),
        ('ARG B=python\nFROM ${B}\nUSER 1000\nENTRYPOINT ["x"]\nHEALTHCHECK CMD ["x"]\n', "not pinned"),
        ('ARG B\nFROM $B\nUSER 1000\nENTRYPOINT ["x"]\nHEALTHCHECK CMD ["x"]\n', "no default"),
        (
            'FROM python:3.11-slim\nADD https://x/y /y\nUSER 1\nENTRYPOINT ["x"]\nHEALTHCHECK CMD ["x"]\n',
            "ADD",
        ),
        (
            'FROM python:3.11-slim\nRUN curl -s x | sh\nUSER 1\nENTRYPOINT ["x"]\nHEALTHCHECK CMD ["x"]\n',
            "pipes",
        ),
    ],
)
def test_the_linter_catches(text: str, problem: str) -> None:
    assert any(problem in p for p in lint_dockerfile(text)), lint_dockerfile(text)


def test_the_image_runs_the_daemon_with_valid_arguments_and_copies_only_what_exists() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    entrypoint = json.loads(next(a for w, a in reversed(instructions) if w == "ENTRYPOINT"))
    cmd = json.loads(next(a for w, a in reversed(instructions) if w == "CMD"))
    assert entrypoint == ["container-manager"] and cmd[0] == "process_jobs"
    options = process_jobs_args(cmd[1:])
    assert options.metrics_addr == "0.0.0.0", "reachable by Prometheus from other containers"
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    exposed = [a for w, a in instructions if w == "EXPOSE"]
    assert exposed == [str(options.metrics_port)]
    keep = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    build_image = (ROOT / "scripts" / "build-image").read_text()
    for word, args in instructions:
        if word == "COPY" and not args.startswith("--from"):
            *sources, _target = args.split()
            for source in sources:
                # dist/ is made by scripts/build-image (the wheels); everything else is committed.
                if source.startswith("dist/"):
                    assert f"={source.rstrip('/')}\n" in build_image, (
                        f"COPY {source}: not made by build-image"
                    )
                else:
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source.rstrip("/") in keep, f"COPY {source}: excluded by .dockerignore"


def _lock_pins() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of deploy/container/requirements.lock."""
    from packaging.utils import canonicalize_name

    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            name = canonicalize_name(match.group(1))
            pins[name] = (match.group(2), 0)
        elif "--hash=sha256:" in line and name:
            pins[name] = (pins[name][0], pins[name][1] + 1)
    return pins


def test_the_image_lock_pins_every_dependency_with_hashes() -> None:
    """The image installs from the lock alone (--require-hashes): a dependency added to
    pyproject.toml without `scripts/build-image --relock` fails here, not in a build."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock_pins()
    assert pins and all(hashes for _, hashes in pins.values()), "every pin has a hash"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{text}: not in {LOCK.name}"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"{text}: locked {pins[name][0]}"
        )
        for extra in requirement.extras:  # psycopg[binary] -> psycopg-binary
            assert canonicalize_name(f"{name}-{extra}") in pins, f"{text}: the extra is not locked"


# compose ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "exec form: a list, not a shell string"
    return [str(c) for c in command]


def test_docker_compose_accepts_the_compose_file(compose: dict[str, Any]) -> None:
    """A real compose implementation (Debian's docker-compose 1.29) validates and resolves the file."""
    require(binary_available("docker-compose"), "docker-compose")
    env = {
        "PATH": "/usr/bin:/bin",
        "POSTGRES_PASSWORD": "pg-secret",
        "DJANGO_SECRET_KEY": "django-secret",
        "GRAFANA_ADMIN_PASSWORD": "grafana-secret",
        "DOCKER_GID": "4242",
    }
    command = ["docker-compose", "--project-name", "container-manager", "-f", str(COMPOSE), "config"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(compose["services"])
    daemon = resolved["services"]["daemon"]
    assert daemon["environment"]["DATABASE_URL"].endswith(":pg-secret@postgres:5432/container_manager")
    assert daemon["group_add"] == ["4242"] and daemon["read_only"] is True
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert daemon["image"] == f"container-manager:{version}", "the tag scripts/build-image gives by default"
    # A required secret left unset is an error, not an empty password.
    del env["POSTGRES_PASSWORD"]
    missing = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD" in missing.stderr


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "migrate", "daemon", "web", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        assert re.search(r":[^:]*\d", image) and not image.endswith(":latest"), f"{name}: unpinned {image}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert service["restart"] == "unless-stopped"


def test_compose_runs_replicas_of_a_hardened_daemon(compose: dict[str, Any]) -> None:
    daemon = compose["services"]["daemon"]
    assert daemon["deploy"]["replicas"] >= 2, "one leader and at least one standby"
    options = process_jobs_args(_command(daemon)[1:])
    assert _command(daemon)[0] == "process_jobs"
    assert options.leader_election == "auto" and options.metrics_addr == "0.0.0.0"
    assert daemon["init"] is True, "an init forwards SIGTERM and reaps children"
    assert daemon["read_only"] is True and daemon["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in daemon["security_opt"]
    assert "user" not in daemon or str(daemon["user"]).split(":")[0] not in ("root", "0")
    assert "/var/run/docker.sock:/var/run/docker.sock" in daemon["volumes"]
    assert daemon["group_add"], "the socket's group, for the non-root user"
    grace = int(str(daemon["stop_grace_period"]).rstrip("s"))
    assert grace > drain_seconds(), "docker must not SIGKILL a draining daemon"
    assert daemon["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert compose["services"]["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    environment = daemon["environment"]
    assert environment["DATABASE_URL"].startswith("postgres://")
    for secret in ("DATABASE_URL", "DJANGO_SECRET_KEY"):
        assert "${" in environment[secret] and ":?" in environment[secret], f"{secret} is not hard-coded"


def test_compose_mounts_exist_and_provision_the_dashboard(compose: dict[str, Any]) -> None:
    services = compose["services"]
    base = COMPOSE.parent
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (base / source).resolve().exists(), f"{name}: {source} does not exist"
    grafana = {
        v.split(":")[1]: (base / v.split(":")[0]).resolve()
        for v in services["grafana"]["volumes"]
        if v.startswith(".")
    }
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/container-manager.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert grafana[dashboards_path] == (DEPLOY / "grafana/dashboards").resolve()
    assert any(p.suffix == ".json" for p in grafana[dashboards_path].iterdir())
    assert (
        grafana["/etc/grafana/provisioning/dashboards"]
        == (DEPLOY / "grafana/provisioning/dashboards").resolve()
    )
    assert (
        grafana["/etc/grafana/provisioning/datasources"]
        == (DEPLOY / "grafana/provisioning/datasources").resolve()
    )
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090", "the compose service name"
    prometheus = {
        v.split(":")[1]: (base / v.split(":")[0]).resolve()
        for v in services["prometheus"]["volumes"]
        if v.startswith(".")
    }
    assert prometheus["/etc/prometheus/prometheus.yml"] == COMPOSE_PROMETHEUS.resolve()
    assert prometheus["/etc/prometheus/alerts.yml"] == (DEPLOY / "prometheus/alerts.yml").resolve()


def test_compose_prometheus_scrapes_every_daemon_replica(tmp_path: Path, compose: dict[str, Any]) -> None:
    config = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "container-manager", "the alert rules select on this job name"
    (sd,) = job["dns_sd_configs"]
    options = process_jobs_args(_command(compose["services"]["daemon"])[1:])
    assert sd["names"] == ["daemon"] and sd["type"] == "A" and sd["port"] == options.metrics_port
    assert config["rule_files"] == ["alerts.yml"]
    require(binary_available("promtool"), "promtool")
    shutil.copy(COMPOSE_PROMETHEUS, tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus/alerts.yml", tmp_path / "alerts.yml")
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_documents_the_socket_risk_and_the_base_image() -> None:
    text = (DEPLOY / "README.md").read_text()
    for needle in ("docker.sock", "TLS", "dedicated", "systemd-analyze verify", "cannot be pulled", "75"):
        assert needle in text, needle
