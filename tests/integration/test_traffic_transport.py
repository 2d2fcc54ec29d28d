"""Traffic stage 1 on the batch-native transport, through the real worker: readings in, aggregates and
forecasts out, bad records dead-lettered, and a SIGKILL mid-stream that changes no sensor window."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from schemas import DeadLetter, SensorAggregate, TrafficForecast, decode
from stream_app.cli.demo import write_network_files
from stream_app.cli.io import to_records
from stream_app.kafka_io import client_options
from tests.integration.conftest import Deployment

if TYPE_CHECKING:
    from tests.integration.conftest import Worker

pytestmark = pytest.mark.integration

STEP_MS = 300_000
WINDOWS = 16
EVERY_MS = 20_000  # one reading per sensor every 20 s: 15 per window
SENSORS = [(f"s{i}", 42.28 + 0.004 * i, -83.74 + 0.003 * i) for i in range(6)]
READINGS_PER_WINDOW = STEP_MS // EVERY_MS * len(SENSORS)
START_MS = (int(time.time() * 1000) - 86_400_000) // STEP_MS * STEP_MS  # a day ago: inside the schema's range
WindowKey = tuple[str, int]  # (sensor, window start)


def _readings() -> list[dict]:
    """Every sensor every 20 s for 16 windows, in time order, with speeds that differ inside a window."""
    return [{"sensor_id": sid, "network": "ring", "ts": START_MS + t, "speed": 30.0 + (t // EVERY_MS * 7 + i) % 23}
            for t in range(0, WINDOWS * STEP_MS, EVERY_MS) for i, (sid, _, _) in enumerate(SENSORS)]


def _expected(readings: list[dict]) -> dict[WindowKey, tuple[int, float, float, float]]:
    """(count, mean, min, max) of every sensor window: what stage 1 must close, each reading once."""
    speeds: dict[WindowKey, list[float]] = defaultdict(list)
    for r in readings:
        speeds[(r["sensor_id"], r["ts"] - r["ts"] % STEP_MS)].append(r["speed"])
    return {key: (len(v), sum(v) / len(v), min(v), max(v)) for key, v in speeds.items()}


def _final_aggregates(deployment: Deployment, count: int) -> dict[WindowKey, tuple[int, float, float, float]]:
    """The aggregates on ``sensor-aggregates``, one per sensor window; copies (replays) must agree."""
    final: dict[WindowKey, tuple[int, float, float, float]] = {}
    for record in deployment.collect("sensor-aggregates", count, timeout_s=120, distinct=_window_of):
        a = decode(record.value, SensorAggregate)
        assert isinstance(a, SensorAggregate), a
        assert record.key == a.network.encode(), "keyed by network"
        value = (a.count, a.mean_speed, a.min_speed, a.max_speed)
        key = (a.sensor_id, a.window_start)
        assert final.setdefault(key, value) == value, f"a replayed aggregate of {key} differs: {value}"
    return final


def _window_of(record) -> WindowKey | None:
    """The sensor window of an aggregate record (replays after a crash repeat windows)."""
    a = decode(record.value, SensorAggregate)
    return (a.sensor_id, a.window_start) if isinstance(a, SensorAggregate) else None


def _forecast_windows(deployment: Deployment, count: int) -> dict[int, set[str]]:
    windows: dict[int, set[str]] = defaultdict(set)
    for record in deployment.collect("traffic-forecasts", count, timeout_s=120):
        forecast = decode(record.value, TrafficForecast)
        assert isinstance(forecast, TrafficForecast), forecast
        windows[forecast.window_end].add(forecast.sensor_id)
    return windows


def _sample(worker: Worker, name: str, **labels: str) -> float | None:
    """A sample of the worker's /metrics (None when absent)."""
    for family in text_string_to_metric_families(worker.metrics_text()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def _metric(worker: Worker, name: str, **labels: str) -> float:
    return _sample(worker, name, **labels) or 0.0


def _committed(deployment: Deployment) -> int:
    """Offsets the sensors group has committed on traffic-readings, summed."""
    async def read() -> int:
        admin = AIOKafkaAdminClient(**client_options(deployment.settings))
        await admin.start()
        try:
            tps = [TopicPartition(deployment.topic("traffic-readings"), p) for p in range(2)]
            found = await admin.list_consumer_group_offsets(f"{deployment.app_id}-sensors", partitions=tps)
            return sum(max(0, found[tp].offset) for tp in tps if tp in found)
        finally:
            await admin.close()
    return asyncio.run(read())


def _kill_while_ahead_of_its_commit(deployment: Deployment, worker: Worker, timeout_s: float = 40.0) -> None:
    """SIGKILL ``worker`` once it has committed a few windows' worth of readings and consumed readings it
    has not committed: consumed is read before the worker is frozen (SIGSTOP), committed while it is,
    so the kill lands with state in the changelog and uncommitted work after it."""
    consumed_name = "stream_app_events_consumed_total"
    topic = deployment.topic("traffic-readings")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        consumed = _metric(worker, consumed_name, topic=topic)
        os.killpg(worker.process.pid, signal.SIGSTOP)
        committed = _committed(deployment)
        if consumed > committed >= 4 * READINGS_PER_WINDOW:
            worker.kill()
            return
        os.killpg(worker.process.pid, signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError("the worker never had uncommitted readings to lose")


def _env(tmp_path: Path) -> dict[str, str]:
    # The last window closes once the input has been silent for 3 s (end of input), no sentinel needed.
    return {"STREAM_APP_NETWORKS": write_network_files("ring", SENSORS, tmp_path / "network"),
            "STREAM_APP_WATERMARK_IDLE_S": "3"}


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_stage_1_on_the_transport_forecasts_and_dead_letters_bad_readings(deployment, tmp_path, guarantee):
    readings = _readings()
    env = {**_env(tmp_path), "STREAM_APP_PROCESSING_GUARANTEE": guarantee}
    worker = deployment.worker(**env)
    wrong_key = json.dumps({"sensor_id": "s1", "network": "ring", "ts": START_MS, "speed": 50.0}).encode()
    deployment.produce([("traffic-readings", b"s0", b"{not json"), ("traffic-readings", b"s0", wrong_key),
                        ("traffic-readings", None, wrong_key)])
    deployment.produce(to_records(readings))

    assert _final_aggregates(deployment, WINDOWS * len(SENSORS)) == _expected(readings), \
        "every reading once in its window; the wrongly keyed copies of an s1 reading in none"
    windows = _forecast_windows(deployment, WINDOWS * len(SENSORS))
    assert sorted(windows) == [START_MS + (k + 1) * STEP_MS for k in range(WINDOWS)]
    assert all(sensors == {s for s, _, _ in SENSORS} for sensors in windows.values())
    forecast = worker.get_json("/networks/ring/sensors/s2/forecast")
    assert forecast["window_end"] == START_MS + WINDOWS * STEP_MS, "the query route answers from stage 2"

    topic = deployment.topic("traffic-readings")
    lag_series = [{"topic": topic, "partition": str(p)} for p in range(2)]
    deadline = time.monotonic() + 20
    while any(_sample(worker, "stream_app_consumer_lag", **labels) != 0 for labels in lag_series):
        assert time.monotonic() < deadline, "the sensors group's lag is exported and drops to 0"
        time.sleep(0.5)

    letters = [decode(r.value, DeadLetter) for r in deployment.collect("dead-letters", 3, timeout_s=30)]
    reasons = sorted(letter.reason for letter in letters if isinstance(letter, DeadLetter))
    assert reasons == ["key_mismatch", "key_mismatch", "malformed_json"], reasons
    assert all(letter.source_topic == deployment.topic("traffic-readings") for letter in letters)


def test_sigkill_mid_stream_counts_every_reading_once_in_the_final_sensor_windows(deployment, kafka, tmp_path):
    readings = _readings()
    expected_count = WINDOWS * len(SENSORS)
    clean = Deployment(kafka=kafka, root=tmp_path / "clean", prefix=f"{deployment.prefix}clean-", extra_env={})
    (tmp_path / "clean").mkdir()
    try:
        clean.worker(**_env(tmp_path))
        clean.produce(to_records(readings))
        uninterrupted = _final_aggregates(clean, expected_count)
    finally:
        clean.stop()

    crashing = deployment.worker("crashing", **_env(tmp_path))
    producer = deployment.produce_in_background(readings, rate=150.0)  # ~13 s: the kill lands while it sends
    _kill_while_ahead_of_its_commit(deployment, crashing)
    restarted = deployment.worker("after", **_env(tmp_path))
    producer.join()

    after_crash = _final_aggregates(deployment, expected_count)
    assert after_crash == uninterrupted == _expected(readings), "every reading counted once, as without the crash"
    windows = _forecast_windows(deployment, expected_count)
    assert len(windows) == WINDOWS and all(len(sensors) == len(SENSORS) for sensors in windows.values())
    restored = _metric(restarted, "stream_app_transport_restored_records_total", source="changelog", store="sensors")
    assert restored > 0, "the restarted worker took its sensor windows from the changelog"
