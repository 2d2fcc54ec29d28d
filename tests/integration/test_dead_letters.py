"""Valid records are processed, malformed ones land on dead-letters with their reason: nothing lost."""

from __future__ import annotations

import json
import re
import time

import pytest

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)


def _user_event(i: int) -> dict:
    return {"event_id": f"e{i}", "user_id": f"u{i % 7}", "ts": NOW_MS - 60_000 + i, "action": "view"}


def _reading(i: int) -> dict:
    return {"sensor_id": f"s{i % 5}", "network": "net", "ts": NOW_MS - 60_000 + i, "speed": 50.0 + i % 10}


# (topic, raw payload, expected rejection reason)
MALFORMED = [
    ("user-events", b"", "empty"),
    ("user-events", b"{not json", "malformed_json"),
    ("user-events", b"\xff\xfe\x00garbage", "malformed_json"),
    ("user-events", json.dumps({**_user_event(1), "lat": 123.0, "lon": 0.0}).encode(), "out_of_range"),
    ("user-events", json.dumps({"event_id": "x", "user_id": "u1", "ts": NOW_MS}).encode(), "invalid_field"),
    ("user-events", json.dumps({**_user_event(2), "ts": 5}).encode(), "bad_timestamp"),
    ("user-events", b"[" * 20000, "too_large"),
    ("traffic-readings", json.dumps({**_reading(1), "speed": -3.0}).encode(), "out_of_range"),
    ("traffic-readings", json.dumps({**_reading(2), "speed": "fast"}).encode(), "invalid_field"),
    ("traffic-readings", b"null", "invalid_field"),
]


def _metric_total(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_malformed_records_reach_dead_letters_and_valid_ones_are_processed(deployment):
    valid_users = [("user-events", f"u{i % 7}".encode(), json.dumps(_user_event(i)).encode()) for i in range(40)]
    valid_readings = [("traffic-readings", f"s{i % 5}".encode(), json.dumps(_reading(i)).encode())
                      for i in range(30)]
    bad = [(topic, b"bad-key", payload) for topic, payload, _ in MALFORMED]
    deployment.worker()
    deployment.produce(valid_users[:20] + bad[:5] + valid_readings + bad[5:] + valid_users[20:])

    letters = deployment.collect("dead-letters", len(MALFORMED))
    decoded = [json.loads(r.value) for r in letters]
    assert len(decoded) == len(MALFORMED), "each malformed record yields exactly one dead letter"
    expected = sorted((deployment.topic(t), reason) for t, _, reason in MALFORMED)
    assert sorted((d["source_topic"], d["reason"]) for d in decoded) == expected
    for letter in decoded:
        assert letter["key"] == "bad-key" and letter["detail"]
        assert letter["offset"] >= 0 and letter["partition"] >= 0
        assert len(letter["payload"]) <= 4096 and letter["payload_size"] >= 0

    worker = deployment.workers[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = worker.metrics_text()
        if (_metric_total(text, "stream_app_events_processed_total", pipeline="behavior") >= 40
                and _metric_total(text, "stream_app_events_processed_total", pipeline="traffic") >= 30):
            break
        time.sleep(0.5)
    assert _metric_total(text, "stream_app_events_processed_total", pipeline="behavior") == 40
    assert _metric_total(text, "stream_app_events_processed_total", pipeline="traffic") == 30
    assert _metric_total(text, "stream_app_dead_letters_total") == len(MALFORMED)
    consumed = _metric_total(text, "stream_app_events_consumed_total")
    assert consumed == 40 + 30 + len(MALFORMED), "consumed = processed + dead letters: nothing lost"
    assert re.search(r'stream_app_dead_letters_total\{reason="out_of_range",topic="[^"]*traffic-readings"\} 1\.0',
                     text)
