"""Every series named in the dashboards and alert rules is one the workers export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream_app.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
TOPICS = {"user-events", "traffic-readings", "next-action-predictions", "traffic-forecasts", "cell-activity",
          "anomaly-alerts", "dead-letters", "sensor-aggregates"}

# Sample names prometheus-client writes for each family type (family.name has no _total / _info).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count"), "info": ("_info",)}
# Labels Prometheus adds at scrape time (target labels) or that histograms carry.
TARGET_LABELS = {"instance", "job", "service"}

SERIES = re.compile(r"\b((?:stream_app|faust)_[A-Za-z0-9_]+)")
SELECTOR = re.compile(r"\b((?:stream_app|faust)_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')


def exported(registry: CollectorRegistry, collectors) -> dict[str, set[str]]:
    """Sample name -> label names, for every series the registry exports."""
    labels = {c._name: set(c._labelnames) for c in collectors}  # noqa: SLF001 - only place they live
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        for suffix in SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = labels.get(family.name, set()) | extra
    return names


def stream_app_series() -> dict[str, set[str]]:
    collectors = [v for v in vars(METRICS).values() if hasattr(v, "_labelnames")]
    return exported(METRICS.registry, collectors)


def faust_series() -> dict[str, set[str]]:
    from faust.sensors.prometheus import FaustMetrics

    registry = CollectorRegistry()
    return exported(registry, list(FaustMetrics.create(registry, "faust")))


KNOWN = {**stream_app_series(), **faust_series()}


def dashboard_exprs() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    return found


def alert_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())["groups"]
    return [(rule.get("alert") or rule["record"], rule["expr"]) for g in groups for rule in g["rules"]]


EXPRS = dashboard_exprs() + alert_exprs()


def test_catalogue_is_readable() -> None:
    assert "stream_app_dead_letters_total" in KNOWN
    assert KNOWN["stream_app_inference_latency_seconds_bucket"] == {"pipeline", "le"}
    assert "stream_app_model_info" in KNOWN and "faust_consumer_commit_latency_bucket" in KNOWN
    assert DASHBOARDS, "no dashboard JSON under deploy/grafana/dashboards"


@pytest.mark.parametrize(("where", "expr"), EXPRS, ids=[w for w, _ in EXPRS])
def test_series_exist(where: str, expr: str) -> None:
    unknown = sorted(set(SERIES.findall(expr)) - KNOWN.keys())
    assert not unknown, f"{where}: {unknown} are not exported (stream_app.metrics / faust sensor)"


@pytest.mark.parametrize(("where", "expr"), EXPRS, ids=[w for w, _ in EXPRS])
def test_selector_labels_exist(where: str, expr: str) -> None:
    for name, body in SELECTOR.findall(expr):
        for label, value in MATCHER.findall(body):
            assert label in KNOWN.get(name, set()) | TARGET_LABELS, f"{where}: {name} has no label {label!r}"
            if label == "topic" and "$" not in value:
                # Exact names, or ".*name" so that a STREAM_APP_TOPIC_PREFIX still matches.
                assert value.removeprefix(".*") in TOPICS, f"{where}: unknown topic {value!r}"


def test_alerts_use_the_required_series() -> None:
    text = " ".join(expr for _, expr in alert_exprs())
    for series in ("stream_app_consumer_lag", "stream_app_dead_letters_total", "stream_app_outputs_total",
                   "stream_app_anomaly_alerts_total", "stream_app_online_hits_total",
                   "stream_app_online_scored_total", "stream_app_forecast_abs_error_sum",
                   "stream_app_forecast_abs_error_count", "stream_app_inference_latency_seconds_bucket"):
        assert series in text


def test_metrics_doc_covers_every_series() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    # Each family by its first sample name (..._total, ..._bucket, ..._sum, ..._info or the gauge itself).
    # Faust's own series join the registry once the app is imported; the doc covers a selection of them.
    families = [f.name + SUFFIXES[f.type][0] for f in METRICS.registry.collect() if f.name.startswith("stream_app_")]
    missing = sorted(name for name in families if not re.search(rf"`{name}`", doc))
    assert not missing, f"docs/metrics.md does not mention {missing}"
