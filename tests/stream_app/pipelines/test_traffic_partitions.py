"""Stage 1 with per-partition state (the transport's ``SensorPartitions``), without a broker."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import msgspec

from schemas import SensorAggregate, TrafficReading, decode_traffic_reading
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received
from stream_app.pipelines.traffic import PARTITION_KEY, SensorPartitions
from stream_app.settings import Settings

STEP_MS = 300_000
GRACE_MS = 60_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % STEP_MS
SETTINGS = Settings(sensor_window_s=300, grace_s=60.0, partitions=2, watermark_idle_s=5.0)
Stores = dict[int, dict[bytes, bytes]]
StoreOf = Callable[[int], "dict[bytes, bytes] | None"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _reading(sensor: str, ts: int, speed: float, partition: int) -> Received[TrafficReading]:
    reading = decode_traffic_reading(msgspec.json.encode({"sensor_id": sensor, "network": "ring", "ts": ts,
                                                          "speed": speed}))
    assert isinstance(reading, TrafficReading), reading
    return Received(reading, ts / 1000, partition)


def _by_partition(*readings: Received[TrafficReading]) -> Mapping[int, Sequence[Received[TrafficReading]]]:
    grouped: dict[int, list[Received[TrafficReading]]] = {}
    for received in readings:
        grouped.setdefault(received.partition, []).append(received)
    return grouped


def _closed(records: list[tuple[bytes, bytes]]) -> list[tuple[str, int, int, float]]:
    """(sensor, window start, count, mean) of each aggregate, checked to be keyed by network."""
    out = []
    for key, value in records:
        aggregate = msgspec.json.decode(value, type=SensorAggregate)
        assert key == aggregate.network.encode()
        out.append((aggregate.sensor_id, aggregate.window_start, aggregate.count, aggregate.mean_speed))
    return out


def _stage(stores: Stores, clock: FakeClock | None = None, metrics: Metrics | None = None
           ) -> tuple[SensorPartitions, StoreOf]:
    stage = SensorPartitions(SETTINGS, metrics or Metrics(), clock=clock or FakeClock())
    return stage, stores.get


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_each_partition_keeps_its_sensors_and_stream_time_in_its_own_store() -> None:
    stores: Stores = {0: {}, 1: {}}
    stage, store_of = _stage(stores)
    stage.process(_by_partition(_reading("a", T0 + 1000, 40.0, 0), _reading("a", T0 + 9000, 50.0, 0),
                                _reading("b", T0 + 5000, 30.0, 1)), store_of)
    assert set(stores[0]) == {b"a", PARTITION_KEY} and set(stores[1]) == {b"b", PARTITION_KEY}
    restored, store_of = _stage(stores)
    restored.assigned({0, 1})
    restored.close_windows({0, 1}, store_of)
    assert restored.partitions[0].stream_time == T0 + 9000 and restored.partitions[1].stream_time == T0 + 5000
    assert set(restored.partitions[0].windows.open) == {"a"} and set(restored.partitions[1].windows.open) == {"b"}


def test_a_window_closes_once_every_owned_partition_passed_it_by_the_grace_in_window_order() -> None:
    metrics, stores = Metrics(), {0: {}, 1: {}}
    stage, store_of = _stage(stores, metrics=metrics)
    stage.assigned({0, 1})
    first = stage.process(_by_partition(_reading("a", T0 + 1000, 40.0, 0), _reading("a", T0 + 2000, 60.0, 0),
                                        _reading("a", T0 + 2 * STEP_MS + GRACE_MS + 1, 10.0, 0)), store_of)
    assert first == [], "partition 1 has no reading yet: it may hold older ones"
    closed = _closed(stage.process(_by_partition(_reading("b", T0 + 3000, 30.0, 1),
                                                 _reading("b", T0 + STEP_MS + 3000, 35.0, 1),
                                                 _reading("b", T0 + 2 * STEP_MS + GRACE_MS, 20.0, 1)), store_of))
    assert closed == [("a", T0, 2, 50.0), ("b", T0, 1, 30.0), ("b", T0 + STEP_MS, 1, 35.0)], \
        "both partitions' windows, window by window"
    assert stage.process(_by_partition(_reading("a", T0 + 3000, 99.0, 0)), store_of) == []
    assert _sample(metrics, "stream_app_late_events_total", pipeline="traffic") == 1
    assert _sample(metrics, "stream_app_events_processed_total", pipeline="traffic") == 7
    assert _sample(metrics, "stream_app_windows_closed_total", kind="sensor") == 3


def test_a_call_closes_only_the_partitions_it_is_given() -> None:
    """exactly_once: a partition's windows close in its own transaction, never in another's."""
    stores: Stores = {0: {}, 1: {}}
    stage, store_of = _stage(stores)
    stage.process(_by_partition(_reading("a", T0 + 1000, 40.0, 0), _reading("b", T0 + 1000, 30.0, 1)), store_of,
                  close=())
    later = T0 + STEP_MS + GRACE_MS
    closed = _closed(stage.process(_by_partition(_reading("a", later, 41.0, 0), _reading("b", later, 31.0, 1)),
                                   store_of, close={0}))
    assert closed == [("a", T0, 1, 40.0)]
    assert set(stage.partitions[1].windows.open["b"]) == {T0, T0 + STEP_MS}, "b's window waits for its own call"
    assert _closed(stage.close_windows({1}, store_of)) == [("b", T0, 1, 30.0)]


def test_a_crash_resumes_each_partition_from_its_store_and_counts_every_reading_once() -> None:
    readings = [_reading(s, T0 + k * 60_000 + i, 40.0 + k, p) for k in range(12) for i, (s, p) in
                enumerate([("a", 0), ("b", 1), ("c", 0)])]
    uninterrupted, store_of = _stage({0: {}, 1: {}})
    expected = _closed(uninterrupted.process(_by_partition(*readings), store_of))
    assert expected, "some windows closed"

    stores: Stores = {0: {}, 1: {}}
    crashed, store_of = _stage(stores)
    got = _closed(crashed.process(_by_partition(*readings[:17]), store_of))
    committed = {p: dict(store) for p, store in stores.items()}  # the checkpoint before the crash
    crashed.process(_by_partition(*readings[17:25]), store_of)  # processed, never committed
    restarted, store_of = _stage(committed)
    restarted.assigned({0, 1})
    got += _closed(restarted.process(_by_partition(*readings[17:]), store_of))
    assert sorted(got) == sorted(expected)


def test_a_revoked_partition_no_longer_holds_the_watermark_and_is_read_again_when_it_comes_back() -> None:
    stores: Stores = {0: {}, 1: {}}
    stage, store_of = _stage(stores)
    stage.process(_by_partition(_reading("a", T0 + 1000, 40.0, 0), _reading("b", T0 + 1000, 30.0, 1)), store_of)
    assert stage.process(_by_partition(_reading("a", T0 + STEP_MS + GRACE_MS, 41.0, 0)), store_of) == [], \
        "partition 1 holds the watermark"
    stage.revoked({1})
    assert _closed(stage.close_windows({0}, store_of)) == [("a", T0, 1, 40.0)]
    elsewhere, other_store_of = _stage(stores)  # another worker moved partition 1 on meanwhile
    elsewhere.process(_by_partition(_reading("b", T0 + 2000, 20.0, 1)), other_store_of, close=())
    stage.assigned({1})
    assert 1 not in stage.partitions and stage.watermark() is None, "unread: it may hold older readings"
    stage.close_windows({0, 1}, store_of)
    assert stage.partitions[1].windows.open["b"][T0].count == 2, "read back from its store"


def test_silent_partitions_stop_holding_the_watermark_and_an_ended_input_closes_its_last_windows() -> None:
    clock, stores = FakeClock(), {0: {}, 1: {}}
    stage, store_of = _stage(stores, clock)
    stage.assigned({0, 1})
    stage.process(_by_partition(_reading("a", T0 + 1000, 40.0, 0)), store_of)
    assert stage.close_windows({0, 1}, store_of) == [], "partition 1, assigned but without a reading, holds it"
    clock.now = SETTINGS.watermark_idle_s + 0.1
    closed = _closed(stage.process(_by_partition(_reading("a", T0 + STEP_MS + GRACE_MS, 41.0, 0)), store_of))
    assert closed == [("a", T0, 1, 40.0)], "partition 1 has been silent since its assignment: it no longer holds it"
    clock.now = 2 * SETTINGS.watermark_idle_s + 0.1
    assert stage.close_windows({0, 1}, store_of) == [], "partition 0 is still active"
    clock.now = 2 * SETTINGS.watermark_idle_s + 0.2
    assert _closed(stage.close_windows({0, 1}, store_of)) == [("a", T0 + STEP_MS, 1, 41.0)], \
        "every partition silent: the input ended for now, its last window closes"
