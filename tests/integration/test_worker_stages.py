"""Two workers of one app id, the stages split between them: ``--stages behavior`` and ``--stages
cells,traffic`` (a process each, as Kafka Streams runs sub-topologies on several threads).

Every event gets its prediction from the first; the second counts the cell events the first
writes into exactly the windows the events imply, and steps the traffic network; each answers the
query routes of its own stages, and those of the other with a 404 that says whom to ask.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections import defaultdict

import h3
import pytest
from aiokafka.partitioner import murmur2

from schemas import CellActivity, decode
from stream_app.cli.demo import write_network_files
from stream_app.cli.io import to_records
from stream_app.windows import window_starts

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000) - 3 * 3_600_000
SIZE_MS, STEP_MS, RESOLUTION = 300_000, 60_000, 8
SENSOR_STEP_MS = 300_000


def _closers(ts: int, partitions: int = 2) -> list[dict]:
    """A far-away event from each user-events partition into each cell-events partition: every cell
    partition's watermark (which waits for every source partition) passes the workload's windows."""
    def partition_of(key: str) -> int:
        return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions

    users = {partition_of(f"closer-u{k}"): f"closer-u{k}" for k in range(100)}
    cells = {partition_of(h3.latlng_to_cell(10.0 + k * 0.1, 10.0, RESOLUTION)): (10.0 + k * 0.1, 10.0)
             for k in range(100)}
    return [{"event_id": f"closer-{u}-{c}", "user_id": users[u], "ts": ts, "action": "view", "lat": cells[c][0],
             "lon": cells[c][1]} for u in range(partitions) for c in range(partitions)]


def _expected_windows(events: list[dict]) -> dict[tuple[str, int], dict]:
    expected: dict[tuple[str, int], dict] = defaultdict(lambda: {"events": 0, "users": set(),
                                                                 "actions": defaultdict(int)})
    for e in events:
        cell = h3.latlng_to_cell(e["lat"], e["lon"], RESOLUTION)
        for start in window_starts(e["ts"], SIZE_MS, STEP_MS):
            window = expected[(cell, start)]
            window["events"] += 1
            window["users"].add(e["user_id"])
            window["actions"][e["action"]] += 1
    return expected


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
    rng = random.Random(7)
    spots = [(40.70, -74.00), (40.75, -73.98), (40.80, -73.95)]
    events = []
    for k in range(150):
        lat, lon = rng.choice(spots)
        events.append({"event_id": f"e{k}", "user_id": f"u{rng.randrange(12)}", "ts": NOW_MS + k * 10_000,
                       "action": rng.choice(["view", "buy", "like"]), "lat": lat, "lon": lon})
    closers = _closers(NOW_MS + 3_600_000)
    expected = _expected_windows(events)
    sensors = [(f"s{i}", 42.28 + 0.005 * i, -83.74) for i in range(3)]
    network = write_network_files("ring", sensors, tmp_path / "net")
    start = NOW_MS - NOW_MS % SENSOR_STEP_MS
    readings = [{"sensor_id": f"s{i}", "network": "ring", "ts": start + step * SENSOR_STEP_MS + 1000 * i,
                 "speed": 40.0 + i} for step in range(4) for i in range(3)]

    env = {"STREAM_APP_CELL_WINDOW_S": "300", "STREAM_APP_CELL_STEP_S": "60", "STREAM_APP_H3_RESOLUTION": "8",
           "STREAM_APP_WATERMARK_IDLE_S": "60", "STREAM_APP_NETWORKS": network}
    behavior = deployment.worker("behavior", flags=["--stages", "behavior"], **env)
    cells = deployment.worker("cells-traffic", flags=["--stages", "cells,traffic"], **env)
    deployment.produce(to_records(events + closers + readings))

    predictions = [json.loads(r.value) for r in deployment.collect("next-action-predictions",
                                                                   len(events) + len(closers), settle_s=1.0)]
    assert sorted(p["event_id"] for p in predictions) == sorted(e["event_id"] for e in events + closers), \
        "every event gets exactly one prediction"

    records = deployment.collect("cell-activity", len(expected))
    got = {}
    for record in records:
        activity = decode(record.value, CellActivity)
        assert isinstance(activity, CellActivity)
        if activity.events == 0:  # a profiled cell's silent window, after its last event
            continue
        assert (activity.cell, activity.window_start) not in got, "each window emitted once"
        got[(activity.cell, activity.window_start)] = activity
    assert set(got) == set(expected), (sorted(set(got) - set(expected)), sorted(set(expected) - set(got)))
    for key, activity in got.items():
        want = expected[key]
        assert (activity.events, activity.users, activity.actions) == \
            (want["events"], len(want["users"]), dict(want["actions"]))

    # windows 0 and 1 of each of the 3 sensors close (the latest reading passes them by the grace)
    forecasts = [json.loads(r.value) for r in deployment.collect("traffic-forecasts", 6, settle_s=0.5)]
    assert len(forecasts) >= 6 and {f["network"] for f in forecasts} == {"ring"}

    # each stage ran in its own worker only
    behavior_metrics, cells_metrics = behavior.metrics_text(), cells.metrics_text()
    user_events, cell_events = deployment.topic("user-events"), deployment.topic("cell-events")
    assert _consumed(behavior_metrics, user_events) == len(events) + len(closers)
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
