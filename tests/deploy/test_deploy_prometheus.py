"""deploy/prometheus.yml and deploy/alerts.yml: promtool accepts them and the alert unit tests pass."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OPERATIONS = ROOT / "docs" / "operations.md"
SEVERITIES = {"warning", "critical"}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules(run_promtool) -> None:
    run_promtool("check", "rules", "alerts.yml", cwd=DEPLOY)


def test_promtool_check_config(tmp_path: Path, run_promtool) -> None:
    # A copy in a clean folder proves rule_files resolves next to prometheus.yml, as mounted in compose.
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(DEPLOY / name, tmp_path / name)
    run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def test_promtool_alert_unit_tests(run_promtool) -> None:
    out = run_promtool("test", "rules", "alerts_test.yml", cwd=DEPLOY)
    assert "SUCCESS" in out.stdout + out.stderr


def test_unit_tests_cover_dead_letters_and_worker_down() -> None:
    tests = yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case.get("exp_alerts")}
    assert {"StreamAppDeadLetterRateHigh", "StreamAppWorkerDown"} <= fired


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_rule_shape(rule: dict) -> None:
    assert rule.get("for"), f"{rule['alert']} has no 'for:'"
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    assert annotations.get("summary") and annotations.get("description")
    anchor = f"docs/operations.md#{rule['alert'].lower()}"
    assert anchor in annotations["description"], f"{rule['alert']}: description lacks the runbook hint {anchor}"


def test_every_alert_has_a_runbook_section() -> None:
    headings = set(re.findall(r"^#{2,4} +(\S+)\s*$", OPERATIONS.read_text(), flags=re.MULTILINE))
    missing = [rule["alert"] for rule in alert_rules() if rule["alert"] not in headings]
    assert not missing, f"docs/operations.md has no runbook heading for {missing}"


def test_required_alerts_present() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "StreamAppWorkerDown", "StreamAppConsumerLagGrowing", "StreamAppDeadLetterRateHigh",
        "StreamAppNoPredictions", "StreamAppAnomalyAlertRateHigh", "StreamAppOnlineAccuracyDegrading",
        "StreamAppForecastMAEDegrading", "StreamAppInferenceLatencyHigh",
    } <= names
