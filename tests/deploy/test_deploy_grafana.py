"""Grafana provisioning and dashboards: valid JSON, one datasource, PromQL that parses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# Grafana variables, replaced by sample values so promtool can parse the queries.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$window": "15m",
             "$instance": ".*"}


def datasource() -> dict:
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    return source


def panels(board: dict) -> list[dict]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def board(request: pytest.FixtureRequest) -> dict:
    return json.loads(request.param.read_text())


def test_datasource_points_at_compose_prometheus() -> None:
    source = datasource()
    assert source["type"] == "prometheus" and source["uid"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert re.fullmatch(r"http://prometheus:9090/?", source["url"]) and "prometheus" in compose["services"]


def test_dashboard_provider_path_is_mounted() -> None:
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "stream-app.yml").read_text())["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()


def test_dashboard_shape(board: dict) -> None:
    assert isinstance(board["schemaVersion"], int) and board["uid"] and board["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    uid = datasource()["uid"]
    for panel in panels(board):
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= pos.keys() and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] in {"row", "text"}:
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]
            assert target.get("datasource", panel["datasource"])["uid"] == uid
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == uid


def test_uids_unique() -> None:
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_required_panels_present() -> None:
    exprs = " ".join(t["expr"] for p in DASHBOARDS for panel in panels(json.loads(p.read_text()))
                     for t in panel.get("targets", []))
    for needle in ("stream_app_events_consumed_total", "stream_app_outputs_total",
                   "stream_app_inference_latency_seconds_bucket", "stream_app_end_to_end_latency_seconds_bucket",
                   "stream_app_consumer_lag", "sum by (reason) (rate(stream_app_dead_letters_total",
                   "stream_app_batch_size_bucket", "stream_app_online_hits_total",
                   "stream_app_forecast_abs_error_sum", "sum by (kind) (rate(stream_app_anomaly_alerts_total",
                   "stream_app_model_info"):
        assert needle in exprs, needle
    texts = " ".join(panel.get("options", {}).get("content", "") for p in DASHBOARDS
                     for panel in panels(json.loads(p.read_text())))
    assert "traffic-forecasts" in texts


def test_queries_parse_as_promql(tmp_path: Path, run_promtool) -> None:
    rules = []
    for dashboard in DASHBOARDS:
        for panel in panels(json.loads(dashboard.read_text())):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, value in VARIABLES.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"{dashboard.name}: {panel['title']}: unknown variable in {expr}"
                rules.append({"record": f"dashboard:query_{len(rules)}", "expr": expr})
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run_promtool("check", "rules", "queries.yml", cwd=tmp_path)
