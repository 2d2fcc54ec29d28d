"""The traffic pipeline without a broker: sensor windows (stage 1), network snapshots (stage 2), alerts."""

from __future__ import annotations

import msgspec
import numpy as np

from models.traffic.graph import SensorNetwork
from schemas import SensorAggregate, TrafficForecast, TrafficReading, decode_traffic_reading
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received
from stream_app.pipelines.traffic import NetworkSnapshots, SensorWindows
from stream_app.settings import Settings

STEP_MS = 300_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % STEP_MS
SETTINGS = Settings(sensor_window_s=300, grace_s=60.0, partitions=2, watermark_idle_s=5.0, horizons_min=(15, 30, 60))
SENSORS = ("s0", "s1", "s2")
RING = SensorNetwork(name="ring", sensor_ids=SENSORS, coords=None, adjacency=np.zeros((3, 3), dtype=np.float32))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------- stage 1


def _reading(sensor: str, ts: int, speed: float, partition: int, flow: float | None = None
             ) -> Received[TrafficReading]:
    body = {"sensor_id": sensor, "network": "ring", "ts": ts, "speed": speed}
    if flow is not None:
        body["flow"] = flow
    reading = decode_traffic_reading(msgspec.json.encode(body))
    assert isinstance(reading, TrafficReading), reading
    return Received(reading, ts / 1000, partition)


def _aggregates(records: list[tuple[bytes, bytes]]) -> list[SensorAggregate]:
    decoded = [msgspec.json.decode(value, type=SensorAggregate) for _, value in records]
    assert all(key == a.network.encode() for (key, _), a in zip(records, decoded, strict=True)), "keyed by network"
    return decoded


def test_a_sensor_window_closes_once_every_partition_passed_it_by_the_grace() -> None:
    metrics, store = Metrics(), {}
    stage = SensorWindows(SETTINGS, store, metrics, clock=FakeClock())
    assert stage.process([_reading("s0", T0 + 1000, 40.0, 0, flow=3.0), _reading("s0", T0 + 2000, 60.0, 0),
                          _reading("s1", T0 + STEP_MS + 61_000, 50.0, 0)]) == [], "partition 1 holds it"
    assert set(store) == {b"s0", b"s1"}
    closed = _aggregates(stage.process([_reading("s2", T0 + STEP_MS + 30_000, 45.0, 1)]))
    assert closed == [], "partition 1 is 30 s past the window end: within the grace"
    closed = _aggregates(stage.process([_reading("s2", T0 + STEP_MS + 61_000, 45.0, 1)]))
    assert [(a.sensor_id, a.window_start, a.window_end) for a in closed] == [("s0", T0, T0 + STEP_MS)]
    aggregate = closed[0]
    assert (aggregate.mean_speed, aggregate.min_speed, aggregate.max_speed, aggregate.count, aggregate.flow_sum) == \
        (50.0, 40.0, 60.0, 2, 3.0)
    assert stage.process([_reading("s0", T0 + 3000, 99.0, 0)]) == []
    assert _sample(metrics, "stream_app_late_events_total", pipeline="traffic") == 1
    assert _sample(metrics, "stream_app_events_processed_total", pipeline="traffic") == 6
    assert _sample(metrics, "stream_app_windows_closed_total", kind="sensor") == 1


def test_sensor_windows_continue_from_the_store_after_a_restart() -> None:
    store: dict[bytes, bytes] = {}
    SensorWindows(SETTINGS, store, Metrics(), clock=FakeClock()).process([_reading("s0", T0 + 1000, 40.0, 0)])
    restarted = SensorWindows(SETTINGS, store, Metrics(), clock=FakeClock())
    closed = _aggregates(restarted.process([_reading("s0", T0 + 2000, 60.0, 0),
                                            _reading("s1", T0 + 2 * STEP_MS, 50.0, 0),
                                            _reading("s1", T0 + 2 * STEP_MS, 50.0, 1)]))
    assert [(a.sensor_id, a.count, a.mean_speed) for a in closed] == [("s0", 2, 50.0)]


# ---------------------------------------------------------------- stage 2


def _aggregate(sensor: str, step: int, speed: float) -> SensorAggregate:
    start = T0 + step * STEP_MS
    return SensorAggregate(sensor_id=sensor, network="ring", window_start=start, window_end=start + STEP_MS,
                           mean_speed=speed, min_speed=speed, max_speed=speed, count=1, flow_sum=None)


def _forecasts(records: list[tuple[bytes, bytes]]) -> list[TrafficForecast]:
    decoded = [msgspec.json.decode(value, type=TrafficForecast) for _, value in records]
    assert all(key == f.sensor_id.encode() for (key, _), f in zip(records, decoded, strict=True)), "keyed by sensor"
    return decoded


def _snapshots(store: dict | None = None) -> tuple[NetworkSnapshots, Metrics]:
    metrics = Metrics()
    return NetworkSnapshots(SETTINGS, {} if store is None else store, metrics, networks={"ring": RING},
                            clock=lambda: 1_800_000_000.0), metrics


def test_a_snapshot_is_stepped_when_every_sensor_reported() -> None:
    stage, metrics = _snapshots()
    assert stage.process([_aggregate("s0", 0, 40.0), _aggregate("s1", 0, 41.0)]).forecasts == [], "s2 missing"
    forecasts = _forecasts(stage.process([_aggregate("s2", 0, 42.0)]).forecasts)
    assert [(f.sensor_id, f.window_end, f.observed, f.imputed) for f in forecasts] == \
        [("s0", T0 + STEP_MS, 40.0, False), ("s1", T0 + STEP_MS, 41.0, False), ("s2", T0 + STEP_MS, 42.0, False)]
    assert [h.minutes for h in forecasts[0].horizons] == [15, 30, 60]
    assert forecasts[0].model_version == "persistence" and forecasts[0].horizons[0].speed == 40.0
    assert stage.latest_forecast("s1", "ring")["observed"] == 41.0
    assert stage.latest_forecast("s1")["window_end"] == T0 + STEP_MS
    assert _sample(metrics, "stream_app_outputs_total", topic="traffic-forecasts") == 3


def test_a_later_window_steps_the_incomplete_one_with_missing_sensors_imputed_and_flagged() -> None:
    stage, metrics = _snapshots()
    outputs = stage.process([_aggregate("s0", 0, 40.0), _aggregate("s1", 0, 41.0), _aggregate("s0", 1, 43.0)])
    forecasts = {f.sensor_id: f for f in _forecasts(outputs.forecasts)}
    assert set(forecasts) == set(SENSORS) and {f.window_end for f in forecasts.values()} == {T0 + STEP_MS}
    assert forecasts["s2"].imputed and forecasts["s2"].observed is None
    assert all(np.isfinite(h.speed) for h in forecasts["s2"].horizons)
    assert not forecasts["s0"].imputed and forecasts["s0"].observed == 40.0
    assert _sample(metrics, "stream_app_sensors_imputed_total") == 1
    assert stage.process([_aggregate("s2", 0, 42.0)]).forecasts == [], "its window was already stepped"
    assert _sample(metrics, "stream_app_late_events_total", pipeline="traffic") == 1


def test_network_state_continues_from_the_store_after_a_restart() -> None:
    store: dict[bytes, bytes] = {}
    running, _ = _snapshots(store)
    running.process([_aggregate(s, 0, 40.0) for s in SENSORS] + [_aggregate("s0", 1, 50.0)])
    assert set(store) == {b"ring"}
    restarted, _ = _snapshots(store)
    forecasts = _forecasts(restarted.process([_aggregate("s1", 1, 51.0), _aggregate("s2", 1, 52.0)]).forecasts)
    assert [(f.sensor_id, f.window_end, f.observed) for f in forecasts] == \
        [("s0", T0 + 2 * STEP_MS, 50.0), ("s1", T0 + 2 * STEP_MS, 51.0), ("s2", T0 + 2 * STEP_MS, 52.0)], \
        "the pending window (s0's report) and the forecaster came back"
    assert restarted.forecasters["ring"].last_window_end_ms == T0 + 2 * STEP_MS


def test_without_a_calibrated_checkpoint_a_departing_sensor_raises_no_alert() -> None:
    """Per-window z-score alerts are gone: incidents need the monitor a checkpoint calibrated."""
    stage, metrics = _snapshots()
    for step, speed in enumerate([50.0] * 20 + [5.0, 95.0, 5.0]):
        outputs = stage.process([_aggregate("s0", step, speed), _aggregate("s1", step, 50.0),
                                 _aggregate("s2", step, 50.0)])
        assert len(outputs.forecasts) == 3 and outputs.alerts == []
    assert stage.alerts["ring"].monitor is None


def test_the_last_window_of_a_replay_closes_after_the_idle_timeout_and_gets_forecasts() -> None:
    clock = FakeClock()
    sensors = SensorWindows(SETTINGS, {}, Metrics(), clock=clock)
    snapshots, _ = _snapshots()
    replay = [_reading(s, T0 + step * STEP_MS + 100_000, 40.0 + step, partition=i % 2)
              for step in range(3) for i, s in enumerate(SENSORS)]
    stepped = _forecasts(snapshots.process(_aggregates(sensors.process(replay))).forecasts)
    assert {f.window_end for f in stepped} == {T0 + STEP_MS, T0 + 2 * STEP_MS}, "the last window is still open"
    clock.now = SETTINGS.watermark_idle_s
    assert sensors.close_windows() == [], "not idle for longer than STREAM_APP_WATERMARK_IDLE_S yet"
    clock.now = SETTINGS.watermark_idle_s + 0.5  # the agent's timer calls close_windows every second
    last = _forecasts(snapshots.process(_aggregates(sensors.close_windows())).forecasts)
    assert [(f.sensor_id, f.window_end, f.observed) for f in last] == \
        [(s, T0 + 3 * STEP_MS, 42.0) for s in SENSORS]
