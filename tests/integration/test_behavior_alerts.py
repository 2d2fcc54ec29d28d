"""Behavior anomaly alerts through the real broker and a real ``stream-app worker`` serving a trained model.

A small generated city is trained on (a module fixture, one CPU thread), then the same city with
one account taken over late in the run (``simulation.users.Takeover``) goes through the worker.
The taken-over user gets a ``behavior`` alert on ``anomaly-alerts`` (keyed by the user) within a
few of the intruder's events and none before; the city's other users, a clean run of the same
size, alert on at most 0.5 % of users per simulated day.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas import AnomalyAlert, decode
from simulation.users import BehaviorConfig, Takeover, generate_user_events
from stream_app.cli.io import to_records

if TYPE_CHECKING:
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

USERS, EVENTS, SEED, EPOCHS = 150, 24_000, 21, 5  # 3.75 simulated days; training: ~25 s of one CPU
VICTIM = 0           # a user with 34 events after the takeover in this city
TAKEOVER_AT = 0.85   # fraction of the run's time span
WITHIN_EVENTS = 8    # "a few events": the CUSUM needs 4 at least; offline this city flags it at the 4th
CLEAN_RATE = 0.005   # alerts per user per simulated day, at most (2 here; offline the other users raise 2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default recipe trained on the clean city (one thread, a few epochs)."""
    path = tmp_path_factory.mktemp("behavior-alerts") / "next-action.pt"
    command = [sys.executable, "-m", "stream_app", "train", "next-action", "--data", "generated",
               "--users", str(USERS), "--events", str(EVENTS), "--data-seed", str(SEED), "--epochs", str(EPOCHS),
               "--threads", "1", "--device", "cpu", "--no-progress", "--out", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return path


def test_a_takeover_raises_a_behavior_alert_within_a_few_events_and_clean_users_stay_quiet(
        deployment: Deployment, checkpoint: Path) -> None:
    clean = generate_user_events(BehaviorConfig(n_users=USERS, n_events=EVENTS, seed=SEED)).events
    takeover_ms = clean[0]["ts"] + int(TAKEOVER_AT * (clean[-1]["ts"] - clean[0]["ts"]))
    workload = generate_user_events(BehaviorConfig(n_users=USERS, n_events=EVENTS, seed=SEED, takeovers=(
        Takeover(user=VICTIM, start_ms=takeover_ms, seed=7),)))
    events, victim = workload.events, f"user-{VICTIM:05d}"
    intruder_ids = [e["event_id"] for e, intruder in zip(events, workload.intruder, strict=True) if intruder]
    assert len(intruder_ids) >= 2 * WITHIN_EVENTS, "the victim acts enough after the takeover to be judged"

    deployment.worker(STREAM_APP_CHECKPOINT=str(checkpoint))
    deployment.produce(to_records(events))
    predictions = deployment.collect("next-action-predictions", count=len(events), timeout_s=150, settle_s=0)
    assert len(predictions) >= len(events), f"{len(predictions)} of {len(events)} events predicted"
    records = deployment.collect("anomaly-alerts", count=10**9, timeout_s=4, settle_s=0)  # all there is
    alerts = [(r.key, decode(r.value, AnomalyAlert)) for r in records]
    behavior = [(key, alert) for key, alert in alerts if isinstance(alert, AnomalyAlert) and alert.kind == "behavior"]
    assert all(key == alert.key.encode() for key, alert in behavior), "alerts are keyed by their user"

    on_victim = [alert for _, alert in behavior if alert.key == victim]
    assert on_victim, f"no behavior alert for {victim}; alerts: {[a.key for _, a in behavior]}"
    first = on_victim[0]
    raised_by = first.alert_id.removeprefix(f"behavior:{victim}:")
    assert raised_by in intruder_ids, f"the victim's first alert ({raised_by}) comes after the takeover"
    assert intruder_ids.index(raised_by) < WITHIN_EVENTS, f"alerted at the intruder's event {raised_by}"
    assert first.ts >= takeover_ms and first.observed > first.expected and first.score >= 7.0
    assert "improbable actions in a row" in first.detail, first.detail  # the evidence: the run's actions

    clean_alerts = [alert for _, alert in behavior if alert.key != victim]
    days = (events[-1]["ts"] - events[0]["ts"]) / 86_400_000
    allowed = int(CLEAN_RATE * (USERS - 1) * days)
    print(f"\nvictim alerted at the intruder's event {intruder_ids.index(raised_by) + 1}; clean users: "
          f"{len(clean_alerts)} alerts over {USERS - 1} users x {days:.2f} days (at most {allowed})")
    assert len(clean_alerts) <= allowed, [a.detail for a in clean_alerts]
