"""The transport hot path exports the consumer lag of its own group on ``user-events``."""

from __future__ import annotations

import json
import re
import time

import pytest

pytestmark = pytest.mark.integration

EVENTS = 40


def _lag_series(text: str, topic: str) -> dict[str, float]:
    pattern = re.compile(r'^stream_app_consumer_lag\{partition="(\d+)",topic="' + re.escape(topic) + r'"\} (\S+)$')
    return {m.group(1): float(m.group(2)) for m in map(pattern.match, text.splitlines()) if m}


def test_user_events_lag_is_exported_per_partition_and_reaches_zero_once_committed(deployment):
    deployment.extra_env["STREAM_APP_HOT_PATH"] = "transport"
    worker = deployment.worker()
    deployment.produce([("user-events", f"u{i % 7}".encode(),
                         json.dumps({"event_id": f"e{i}", "user_id": f"u{i % 7}", "ts": 1_700_000_000_000 + i,
                                     "action": "view"}).encode()) for i in range(EVENTS)])
    deployment.collect("next-action-predictions", EVENTS, settle_s=0)
    topic = deployment.topic("user-events")
    deadline, series = time.monotonic() + 30, {}
    while time.monotonic() < deadline:  # a sample every 5 s; offsets are committed every second
        series = _lag_series(worker.metrics_text(), topic)
        if set(series) == {"0", "1"} and not any(series.values()):
            break
        time.sleep(0.5)
    assert set(series) == {"0", "1"}, f"one series per partition of {topic}: {series}"
    assert series == {"0": 0.0, "1": 0.0}, "every event processed and committed: no lag"
