"""Two workers of one app id, the stages split between them: ``--stages behavior`` and ``--stages
cells,traffic`` (a process each, as Kafka Streams runs sub-topologies on several threads).

Every event gets its prediction from the first; the second counts the cell events the first
writes into exactly the windows the events imply, and steps the traffic network; each answers the
query routes of its own stages, and those of the other with a 404 that says whom to ask.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from stream_app.cli.demo import write_network_files
from stream_app.cli.io import to_records
from tests.integration.cell_workload import CELL_ENV, check_cell_windows, closers, expected_windows, located_events

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000) - 3 * 3_600_000
SENSOR_STEP_MS = 300_000


def _http(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _consumed(metrics: str, topic: str) -> float:
    prefix = f'stream_app_events_consumed_total{{topic="{topic}"}} '
    return sum(float(line[len(prefix):]) for line in metrics.splitlines() if line.startswith(prefix))


def test_behavior_and_cells_traffic_in_two_workers(deployment, tmp_path):
    events = located_events(seed=7, count=150, users=12, start_ms=NOW_MS, id_prefix="e")
    ending = closers(NOW_MS + 3_600_000)
    expected = expected_windows(events)
    sensors = [(f"s{i}", 42.28 + 0.005 * i, -83.74) for i in range(3)]
    network = write_network_files("ring", sensors, tmp_path / "net")
    start = NOW_MS - NOW_MS % SENSOR_STEP_MS
    readings = [{"sensor_id": f"s{i}", "network": "ring", "ts": start + step * SENSOR_STEP_MS + 1000 * i,
                 "speed": 40.0 + i} for step in range(4) for i in range(3)]

    env = {**CELL_ENV, "STREAM_APP_NETWORKS": network}
    behavior = deployment.worker("behavior", flags=["--stages", "behavior"], **env)
    cells = deployment.worker("cells-traffic", flags=["--stages", "cells,traffic"], **env)
    deployment.produce(to_records(events + ending + readings))

    predictions = [json.loads(r.value) for r in deployment.collect("next-action-predictions",
                                                                   len(events) + len(ending), settle_s=1.0)]
    assert sorted(p["event_id"] for p in predictions) == sorted(e["event_id"] for e in events + ending), \
        "every event gets exactly one prediction"

    check_cell_windows(deployment.collect("cell-activity", len(expected)), expected)

    # windows 0 and 1 of each of the 3 sensors close (the latest reading passes them by the grace)
    forecasts = [json.loads(r.value) for r in deployment.collect("traffic-forecasts", 6, settle_s=0.5)]
    assert len(forecasts) >= 6 and {f["network"] for f in forecasts} == {"ring"}

    # each stage ran in its own worker only
    behavior_metrics, cells_metrics = behavior.metrics_text(), cells.metrics_text()
    user_events, cell_events = deployment.topic("user-events"), deployment.topic("cell-events")
    assert _consumed(behavior_metrics, user_events) == len(events) + len(ending)
    assert _consumed(behavior_metrics, cell_events) == 0 and _consumed(cells_metrics, user_events) == 0
    assert _consumed(cells_metrics, cell_events) > 0
    assert _consumed(cells_metrics, deployment.topic("traffic-readings")) == len(readings)

    user = events[0]["user_id"]
    status, body = _http(f"{behavior.web_url}/users/{user}")
    assert status == 200 and body["event_count"] == sum(e["user_id"] == user for e in events), body
    status, body = _http(f"{cells.web_url}/users/{user}")
    assert status == 404 and "does not run the behavior stage" in body["error"] \
        and "--stages behavior" in body["error"], body
    status, body = _http(f"{cells.web_url}/sensors/s0/forecast")
    assert status == 200 and body["sensor_id"] == "s0", body
    status, body = _http(f"{behavior.web_url}/sensors/s0/forecast")
    assert status == 404 and "--stages traffic" in body["error"], body
