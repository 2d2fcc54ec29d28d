"""Every metric that alert rules and dashboards use is exported by a running worker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_info", "_created")


def _referenced_names() -> set[str]:
    exprs = [rule["expr"] for group in yaml.safe_load((ROOT / "deploy/alerts.yml").read_text())["groups"]
             for rule in group["rules"]]
    for dashboard in (ROOT / "deploy/grafana/dashboards").glob("*.json"):
        panels = json.loads(dashboard.read_text())["panels"]
        exprs += [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]
    return {name for expr in exprs for name in re.findall(r"\b(?:stream_app|faust)_[a-z0-9_]+", expr)}


def _exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            names |= {name} | {name + suffix for suffix in SUFFIXES}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_alert_rules_and_dashboards_use_only_exported_metrics(deployment):
    worker = deployment.worker()
    deployment.produce([("user-events", b"u1", json.dumps({"event_id": "e", "user_id": "u1", "ts": 1_700_000_000_000,
                                                           "action": "view"}).encode())])
    deployment.collect("next-action-predictions", 1, settle_s=6)  # a lag sample is taken every 5 s
    exported = _exported_names(worker.metrics_text())
    referenced = _referenced_names()
    assert referenced, "the rules and dashboards reference metrics"
    missing = sorted(name for name in referenced if name not in exported)
    assert not missing, f"referenced but not exported by a running worker: {missing}"
