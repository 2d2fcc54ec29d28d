"""Traffic readings -> per-sensor windows -> network snapshots -> forecasts and alerts.

Stage 1 (key: sensor): tumbling event-time windows per sensor, closed by the watermark (the
smallest of the partitions' latest event times, minus the grace period); a reading for a window
already closed is counted late and dropped. Each closed window becomes a ``SensorAggregate`` on the internal topic, keyed by network.

Stage 2 (key: network): aggregates are gathered per window end. A snapshot is stepped when every
sensor of the network reported, or when an aggregate of a later window arrived (the watermark
passed it). Missing sensors are imputed by the forecaster and flagged in the forecasts.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from functools import partial

import msgspec

from models.traffic.forecaster import StepResult, TrafficForecaster
from schemas import (HorizonForecast, SensorAggregate, TrafficForecast, TrafficReading, decode,
                     decode_traffic_reading, encode)
from stream_app.app import app, settings
from stream_app.ingest import validate_batch
from stream_app.metrics import METRICS
from stream_app.sending import send_records
from stream_app.networks import load_networks, network_from_sensors
from stream_app.traffic_alerts import NetworkAlerts
from stream_app.topics import forecasts, sensor_aggregates, traffic_readings
from stream_app.tables import ready_for_writes
from stream_app.windows import EventTimeWindows, SpeedWindow, Watermark

__all__ = ["sensor_windows", "network_steps", "forecaster_for", "latest_forecast", "network_table"]

log = logging.getLogger(__name__)

PIPELINE = "traffic"
WINDOW_MS = settings.sensor_window_s * 1000
STEPS_PER_HORIZON = {m: max(1, m * 60 // settings.sensor_window_s) for m in settings.horizons_min}

sensor_table = app.Table("sensor-windows", default=None, key_type=bytes, value_type=bytes,
                         partitions=settings.partitions, use_partitioner=True)
network_table = app.Table("network-state", default=None, key_type=bytes, value_type=bytes,
                          partitions=settings.partitions, use_partitioner=True)

windows: EventTimeWindows[SpeedWindow] = EventTimeWindows(size_ms=WINDOW_MS, new_window=SpeedWindow)
watermark = Watermark(grace_ms=int(settings.grace_s * 1000), idle_s=settings.watermark_idle_s,
                      partitions=settings.partitions)
sensor_network: dict[str, str] = {}
registered = load_networks(settings.networks)


class _StoredSensor(msgspec.Struct, array_like=True):
    network: str
    windows: dict[int, tuple[int, float, float, float, float | None]]
    closed_until: int


class _StoredNetwork(msgspec.Struct, array_like=True):
    sensors: list[str]
    forecaster: bytes
    pending: dict[int, dict[str, float]]
    alerts: bytes


_sensor_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_StoredSensor))
_network_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_StoredNetwork))


# ---------------------------------------------------------------- stage 1: sensor windows


@app.agent(traffic_readings)
async def sensor_windows(stream):
    await ready_for_writes(sensor_table)
    restored = False
    async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
        if not restored:
            _restore_sensor_windows()
            restored = True
        valid = await validate_batch(batch, decode_traffic_reading)
        METRICS.batch_size.labels(pipeline=PIPELINE).observe(len(valid))
        touched = {reading.sensor_id for event, reading in valid if _add_reading(reading, event.message.partition)}
        await _emit_closed(touched)
        METRICS.events_processed.labels(pipeline=PIPELINE).inc(len(valid))


@app.timer(1.0)
async def close_idle_sensor_windows() -> None:
    """Close windows even when no reading arrives (idle partitions stop holding the watermark)."""
    await _emit_closed(set())


async def _emit_closed(touched: set[str]) -> None:
    """Send every window the watermark passed to stage 2; persist the sensors that changed."""
    for sensor_id, start, window in list(windows.close(watermark.value)):
        await sensor_aggregates.send(key=sensor_network[sensor_id].encode(),
                                     value=encode(_aggregate(sensor_id, start, window)))
        METRICS.windows_closed.labels(kind="sensor").inc()
        touched.add(sensor_id)
    for sensor_id in touched:
        sensor_table[sensor_id.encode()] = _encode_sensor(sensor_id)


def _add_reading(reading: TrafficReading, partition: int) -> bool:
    watermark.observe(reading.ts, partition)
    sensor_network[reading.sensor_id] = reading.network
    if windows.add(reading.sensor_id, reading.ts, reading.speed, reading.flow):
        return True
    METRICS.late_events.labels(pipeline=PIPELINE).inc()
    return False


def _aggregate(sensor_id: str, start: int, window: SpeedWindow) -> SensorAggregate:
    return SensorAggregate(sensor_id=sensor_id, network=sensor_network[sensor_id], window_start=start,
                           window_end=start + WINDOW_MS, mean_speed=window.mean, min_speed=window.low,
                           max_speed=window.high, count=window.count, flow_sum=window.flow)


def _encode_sensor(sensor_id: str) -> bytes:
    open_windows = {start: (w.count, w.total, w.low, w.high, w.flow)
                    for start, w in windows.open.get(sensor_id, {}).items()}
    stored = _StoredSensor(network=sensor_network[sensor_id], windows=open_windows,
                           closed_until=windows.closed_until.get(sensor_id, -1))
    return _sensor_codec[0].encode(stored)


def _restore_sensor_windows() -> None:
    """Open windows of this worker's sensors, recovered from the table's changelog."""
    for key, raw in list(sensor_table.items()):
        sensor_id, stored = key.decode(), _sensor_codec[1].decode(raw)
        sensor_network[sensor_id] = stored.network
        windows.closed_until[sensor_id] = stored.closed_until
        for start, (count, total, low, high, flow) in stored.windows.items():
            windows.open.setdefault(sensor_id, {})[start] = SpeedWindow(count, total, low, high, flow)


# ---------------------------------------------------------------- stage 2: network steps

_forecasters: dict[str, TrafficForecaster] = {}
_alerts: dict[str, NetworkAlerts] = {}
_pending: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
_latest: dict[str, dict[str, bytes]] = defaultdict(dict)  # network -> sensor -> latest forecast JSON


def latest_forecast(sensor_id: str, network: str | None = None) -> dict | None:
    """The latest forecast of a sensor stepped by this worker (any network when ``network`` is None)."""
    networks = [network] if network is not None else list(_latest)
    for name in networks:
        value = _latest.get(name, {}).get(sensor_id)
        if value is not None:
            return msgspec.json.decode(value)
    return None


@app.agent(sensor_aggregates)
async def network_steps(stream):
    await ready_for_writes(network_table)
    async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
        valid = await validate_batch(batch, partial(decode, cls=SensorAggregate))
        touched = set()
        for _, aggregate in valid:
            _restore_network(aggregate.network)
            _pending[aggregate.network].setdefault(aggregate.window_end, {})[aggregate.sensor_id] = aggregate.mean_speed
            touched.add(aggregate.network)
        for network in touched:
            for window_end in _ready_windows(network):
                await _step(network, window_end, _pending[network].pop(window_end))
            network_table[network.encode()] = _encode_network(network)


def _ready_windows(network: str) -> list[int]:
    """Window ends to step now, in order: complete ones, and any older than a pending one."""
    pending = _pending[network]
    forecaster = _forecasters.get(network)
    done_until = forecaster.last_window_end_ms if forecaster else None
    for window_end in [w for w in pending if done_until is not None and w <= done_until]:
        METRICS.late_events.labels(pipeline=PIPELINE).inc(len(pending.pop(window_end)))
    ends = sorted(pending)
    size = forecaster.network.n_sensors if forecaster else None
    return [w for i, w in enumerate(ends) if i < len(ends) - 1 or (size is not None and len(pending[w]) >= size)]


async def _step(network: str, window_end: int, observed: dict[str, float]) -> None:
    forecaster = forecaster_for(network, observed)
    started = time.perf_counter()
    result = forecaster.advance(window_end, observed)
    METRICS.inference_latency.labels(pipeline=PIPELINE).observe(time.perf_counter() - started)
    METRICS.sensors_imputed.inc(int(result.imputed.sum()))
    _score_forecasts(network, result)
    processed_at = int(time.time() * 1000)
    latest = _latest[network]
    records = []
    for index, sensor_id in enumerate(forecaster.network.sensor_ids):
        latest[sensor_id] = value = encode(_forecast(forecaster, result, index, processed_at))
        records.append((sensor_id.encode(), value))
    await send_records(forecasts, records)
    METRICS.outputs.labels(topic=forecasts.get_topic_name()).inc(forecaster.network.n_sensors)
    await _alerts[network].check(result)


def forecaster_for(network: str, observed: dict[str, float] | None = None) -> TrafficForecaster:
    """The forecaster of ``network``, created on first use (trained model when it fits, else persistence)."""
    if network not in _forecasters:
        graph = registered.get(network) or network_from_sensors(network, observed or {})
        horizons = tuple(STEPS_PER_HORIZON.values())
        forecaster = TrafficForecaster.persistence(graph, horizons=horizons, step_ms=WINDOW_MS)
        if settings.traffic_checkpoint:
            try:
                forecaster = TrafficForecaster.from_checkpoint(settings.traffic_checkpoint, graph, step_ms=WINDOW_MS)
            except Exception as exc:  # a checkpoint for another network: persistence serves this one
                log.warning("network %s: traffic checkpoint not used (%s); serving persistence", network, exc)
        _forecasters[network] = forecaster
        _alerts[network] = NetworkAlerts(network, forecaster.network, settings)
        METRICS.model_info.labels(pipeline=PIPELINE).info({"version": forecaster.version})
    return _forecasters[network]


def _published_horizons(forecaster: TrafficForecaster) -> list[tuple[int, int]]:
    """(column, minutes) of the configured horizons the model forecasts (all of them if none match)."""
    wanted = set(STEPS_PER_HORIZON.values())
    columns = [(i, steps) for i, steps in enumerate(forecaster.horizons) if steps in wanted] or \
        list(enumerate(forecaster.horizons))
    return [(i, steps * settings.sensor_window_s // 60) for i, steps in columns]


def _forecast(forecaster: TrafficForecaster, result: StepResult, index: int, processed_at: int) -> TrafficForecast:
    imputed = bool(result.imputed[index])
    return TrafficForecast(
        sensor_id=forecaster.network.sensor_ids[index], network=forecaster.network.name,
        window_end=result.window_end_ms, observed=None if imputed else float(result.values[index]),
        imputed=imputed, horizons=[HorizonForecast(minutes=m, speed=float(result.forecasts[index, h]))
                                   for h, m in _published_horizons(forecaster)],
        model_version=forecaster.version, processed_at=processed_at)


def _score_forecasts(network: str, result: StepResult) -> None:
    """Online MAE per horizon: each observed value against the forecast made for it earlier."""
    for minutes, error in _alerts[network].horizon_errors(result):
        METRICS.forecast_abs_error.labels(horizon_minutes=str(minutes)).observe(error)


def _encode_network(network: str) -> bytes:
    sensors = list(_forecasters[network].network.sensor_ids) if network in _forecasters else []
    stored = _StoredNetwork(sensors=sensors, forecaster=_forecasters[network].state_bytes() if network in _forecasters else b"",
                            pending=_pending[network],
                            alerts=_alerts[network].to_bytes() if network in _alerts else b"")
    return _network_codec[0].encode(stored)


def _restore_network(network: str) -> None:
    """Recover a network's state from the table the first time this process sees it."""
    if network in _forecasters or network in _pending:
        return
    raw = network_table.get(network.encode())
    if not raw:
        return
    stored = _network_codec[1].decode(raw)
    _pending[network] = dict(stored.pending)
    if stored.forecaster:
        forecaster = forecaster_for(network, dict.fromkeys(stored.sensors, 0.0))
        _forecasters[network] = forecaster.from_state_bytes(stored.forecaster)
        _alerts[network].load(stored.alerts)
