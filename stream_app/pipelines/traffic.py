"""Traffic readings -> per-sensor windows -> network snapshots -> forecasts and alerts.

Stage 1 (:class:`SensorWindows`, key: sensor): tumbling event-time windows per sensor, closed by
the watermark (the smallest of the partitions' latest event times, minus the grace period); a
reading for a window already closed is counted late and dropped. Each closed window becomes a
``SensorAggregate`` record keyed by network.

Stage 2 (:class:`NetworkSnapshots`, key: network): aggregates are gathered per window end. A
snapshot is stepped when every sensor of the network reported, or when an aggregate of a later
window arrived (the watermark passed it). Missing sensors are imputed by the forecaster and
flagged in the forecasts. Each network is served the checkpoint configured for it
(:mod:`stream_app.traffic_models`; persistence without one), per horizon the model or the baseline
that beat it on validation, and reloaded when the file changes; each step is scored by the
checkpoint's calibrated incident monitor (:mod:`stream_app.traffic_alerts`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import msgspec

from models.exceptions import ModelError
from models.traffic.forecaster import StepResult, TrafficForecaster
from models.traffic.graph import SensorNetwork
from schemas import HorizonForecast, SensorAggregate, TrafficForecast, TrafficReading, encode
from schemas.events import READING_KINDS, ReadingKind
from stream_app.metrics import Metrics
from stream_app.networks import load_networks, network_from_sensors
from stream_app.pipelines.base import Received, Record, StateStore, epoch_ms
from stream_app.settings import Settings
from stream_app.traffic_alerts import NetworkAlerts
from stream_app.traffic_models import ServedModel, TrafficModels
from stream_app.windows import EventTimeWindows, SpeedWindow, Watermark

__all__ = ["SensorWindows", "NetworkSnapshots", "NetworkOutputs"]

log = logging.getLogger(__name__)

PIPELINE = "traffic"


class _StoredSensor(msgspec.Struct, array_like=True):
    network: str
    windows: dict[int, tuple[int, float, float, float, float | None]]
    closed_until: int


class _StoredNetwork(msgspec.Struct, array_like=True):
    sensors: list[str]
    forecaster: bytes
    pending: dict[int, dict[str, float]]
    alerts: bytes


_sensor_encoder, _sensor_decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_StoredSensor)
_network_encoder, _network_decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_StoredNetwork)


# ---------------------------------------------------------------- stage 1: sensor windows


class SensorWindows:
    """Tumbling windows of each sensor's readings; closed windows become network-keyed aggregates.

    A window aggregates the readings' values (``TrafficReading.measured``: the speed of a speed
    reading) into the aggregate's ``*_speed`` fields.

    The open windows are restored from ``store`` before the first batch, and each sensor whose
    windows changed is written back after every batch.
    """

    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.window_ms = settings.sensor_window_s * 1000
        self.windows: EventTimeWindows[SpeedWindow] = EventTimeWindows(size_ms=self.window_ms,
                                                                       new_window=SpeedWindow)
        self.watermark = Watermark(grace_ms=int(settings.grace_s * 1000), idle_s=settings.watermark_idle_s,
                                   partitions=settings.partitions, clock=clock, end_of_input_ms=self.window_ms)
        self.sensor_network: dict[str, str] = {}
        self._batch_size = metrics.batch_size.labels(pipeline=PIPELINE)
        self._processed = metrics.events_processed.labels(pipeline=PIPELINE)
        self._late = metrics.late_events.labels(pipeline=PIPELINE)
        self._closed = metrics.windows_closed.labels(kind="sensor")
        self._restored = False

    def process(self, batch: Sequence[Received[TrafficReading]]) -> list[Record]:
        """Add a batch of valid readings; the ``sensor-aggregates`` records of every window that closed."""
        self._restore_once()
        self._batch_size.observe(len(batch))
        touched, late = set(), 0
        for received in batch:
            reading = received.value
            ts = epoch_ms(reading.ts)
            self.watermark.observe(ts, received.partition)
            self.sensor_network[reading.sensor_id] = reading.network
            if self.windows.add(reading.sensor_id, ts, reading.measured, reading.flow):
                touched.add(reading.sensor_id)
            else:
                late += 1
        if late:
            self._late.inc(late)
        aggregates = self.close_windows(touched)
        self._processed.inc(len(batch))
        return aggregates

    def close_windows(self, touched: set[str] | None = None) -> list[Record]:
        """The aggregates of every window the watermark passed; stores the sensors that changed."""
        touched = set() if touched is None else touched
        aggregates = []
        for sensor_id, start, window in list(self.windows.close(self.watermark.value)):
            network = self.sensor_network[sensor_id]
            aggregates.append((network.encode(), encode(self._aggregate(sensor_id, network, start, window))))
            touched.add(sensor_id)
        if aggregates:
            self._closed.inc(len(aggregates))
        for sensor_id in touched:
            self.store[sensor_id.encode()] = self._encode(sensor_id)
        return aggregates

    def _aggregate(self, sensor_id: str, network: str, start: int, window: SpeedWindow) -> SensorAggregate:
        return SensorAggregate(sensor_id=sensor_id, network=network, window_start=start,
                               window_end=start + self.window_ms, mean_speed=window.mean, min_speed=window.low,
                               max_speed=window.high, count=window.count, flow_sum=window.flow)

    def _encode(self, sensor_id: str) -> bytes:
        open_windows = {start: (w.count, w.total, w.low, w.high, w.flow)
                        for start, w in self.windows.open.get(sensor_id, {}).items()}
        stored = _StoredSensor(network=self.sensor_network[sensor_id], windows=open_windows,
                               closed_until=self.windows.closed_until.get(sensor_id, -1))
        return _sensor_encoder.encode(stored)

    def _restore_once(self) -> None:
        """Open windows of this worker's sensors, as the store holds them (once, before the first batch)."""
        if self._restored:
            return
        self._restored = True
        for key, raw in list(self.store.items()):
            sensor_id, stored = key.decode(), _sensor_decoder.decode(raw)
            self.sensor_network[sensor_id] = stored.network
            self.windows.closed_until[sensor_id] = stored.closed_until
            for start, (count, total, low, high, flow) in stored.windows.items():
                self.windows.open.setdefault(sensor_id, {})[start] = SpeedWindow(count, total, low, high, flow)


# ---------------------------------------------------------------- stage 2: network snapshots


@dataclass
class NetworkOutputs:
    """Records of one stage-2 batch, per output topic."""

    forecasts: list[Record] = field(default_factory=list)
    alerts: list[Record] = field(default_factory=list)


class NetworkSnapshots:
    """Per-network snapshots stepped through a forecaster: forecasts, online error and alerts.

    Each network's forecaster state, pending windows and alert state are restored from ``store``
    the first time the network is seen and written back after every batch that touched it. The
    latest forecast of every sensor stepped here is kept for the query API. :meth:`reload_models`
    (called from a timer) swaps in a network's checkpoint when its file changed.
    """

    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics,
                 networks: Mapping[str, SensorNetwork] | None = None, clock: Callable[[], float] = time.time,
                 models: TrafficModels | None = None) -> None:
        self.settings, self.store, self.metrics, self.clock = settings, store, metrics, clock
        self.window_ms = settings.sensor_window_s * 1000
        self.models = models or TrafficModels(settings.traffic_checkpoint, metrics, step_ms=self.window_ms)
        self.steps_per_horizon = {m: max(1, m * 60 // settings.sensor_window_s) for m in settings.horizons_min}
        self.registered = dict(load_networks(settings.networks) if networks is None else networks)
        self.forecasters: dict[str, TrafficForecaster] = {}
        self.alerts: dict[str, NetworkAlerts] = {}
        self.pending: defaultdict[str, dict[int, dict[str, float]]] = defaultdict(dict)
        self.latest: defaultdict[str, dict[str, bytes]] = defaultdict(dict)  # network -> sensor -> forecast JSON
        self._late = metrics.late_events.labels(pipeline=PIPELINE)
        self._inference = metrics.inference_latency.labels(pipeline=PIPELINE)
        self._outputs = metrics.outputs.labels(topic=settings.topic("traffic-forecasts"))

    def process(self, aggregates: Iterable[SensorAggregate]) -> NetworkOutputs:
        """Gather a batch of aggregates; step every snapshot that is ready; the records to send."""
        touched = set()
        for aggregate in aggregates:
            self._restore(aggregate.network)
            self.pending[aggregate.network].setdefault(aggregate.window_end, {})[aggregate.sensor_id] = \
                aggregate.mean_speed
            touched.add(aggregate.network)
        outputs = NetworkOutputs()
        for network in touched:
            for window_end in self._ready_windows(network):
                self._step(network, window_end, self.pending[network].pop(window_end), outputs)
            self.store[network.encode()] = self._encode(network)
        return outputs

    def latest_forecast(self, sensor_id: str, network: str | None = None) -> dict[str, Any] | None:
        """The latest forecast of a sensor stepped here (any network when ``network`` is None)."""
        networks = [network] if network is not None else list(self.latest)
        for name in networks:
            value = self.latest.get(name, {}).get(sensor_id)
            if value is not None:
                forecast: dict[str, Any] = msgspec.json.decode(value)
                return forecast
        return None

    def forecaster_for(self, network: str, observed: Mapping[str, float] | None = None) -> TrafficForecaster:
        """The forecaster of ``network``, created on first use (its checkpoint when one fits, else persistence)."""
        if network not in self.forecasters:
            graph = self.registered.get(network) or network_from_sensors(network, observed or {})
            horizons = tuple(self.steps_per_horizon.values())
            persistence = TrafficForecaster.persistence(graph, horizons=horizons, step_ms=self.window_ms)
            self.forecasters[network] = persistence
            self.alerts[network] = NetworkAlerts(network, self.window_ms)
            served = self.models.load(graph)
            if served is not None:
                self._serve(network, served)
            self._publish_version()
        return self.forecasters[network]

    def reload_models(self) -> list[str]:
        """Serve the changed checkpoint of every network stepped here; the networks now on a new model."""
        reloaded = []
        for network in self.models.changed(list(self.forecasters)):
            served = self.models.load(self.forecasters[network].network)
            if served is not None:
                self._serve(network, served)
                reloaded.append(network)
        if reloaded:
            self._publish_version()
        return reloaded

    def _serve(self, network: str, served: ServedModel) -> None:
        """Swap in a loaded model: last values and window carry over (the hidden state restarts when the
        model changed), open incidents carry over to the new monitor when they fit."""
        current = self.forecasters[network]
        forecaster = served.forecaster
        if current.last_window_end_ms is not None:
            forecaster = forecaster.from_state_bytes(current.state_bytes())
        self.forecasters[network] = forecaster
        self.alerts[network] = self.alerts[network].replaced_by(served.monitor)

    def _publish_version(self) -> None:
        versions = sorted({f.version for f in self.forecasters.values()})
        self.metrics.model_info.labels(pipeline=PIPELINE).info({"version": ",".join(versions)})

    def _ready_windows(self, network: str) -> list[int]:
        """Window ends to step now, in order: complete ones, and any older than a pending one."""
        pending = self.pending[network]
        forecaster = self.forecasters.get(network)
        done_until = forecaster.last_window_end_ms if forecaster else None
        for window_end in [w for w in pending if done_until is not None and w <= done_until]:
            self._late.inc(len(pending.pop(window_end)))
        ends = sorted(pending)
        # An unregistered network is learned from its first snapshot: that one waits for a later window.
        known = forecaster.network if forecaster else self.registered.get(network)
        size = known.n_sensors if known else None
        return [w for i, w in enumerate(ends) if i < len(ends) - 1 or (size is not None and len(pending[w]) >= size)]

    def _step(self, network: str, window_end: int, observed: dict[str, float], outputs: NetworkOutputs) -> None:
        forecaster = self.forecaster_for(network, observed)
        started = time.perf_counter()
        result = forecaster.advance(window_end, observed)
        self._inference.observe(time.perf_counter() - started)
        self.metrics.sensors_imputed.inc(int(result.imputed.sum()))
        self._score_forecasts(network, result)
        processed_at = int(self.clock() * 1000)
        latest = self.latest[network]
        for index, sensor_id in enumerate(forecaster.network.sensor_ids):
            latest[sensor_id] = value = encode(self._forecast(forecaster, result, index, processed_at))
            outputs.forecasts.append((sensor_id.encode(), value))
        self._outputs.inc(forecaster.network.n_sensors)
        for alert in self.alerts[network].alerts(result):
            outputs.alerts.append((alert.key.encode(), encode(alert)))
            self.metrics.anomaly_alerts.labels(kind=alert.kind).inc()

    def _published_horizons(self, forecaster: TrafficForecaster) -> list[tuple[int, int]]:
        """(column, minutes) of the configured horizons the model forecasts (all of them if none match)."""
        wanted = set(self.steps_per_horizon.values())
        columns = [(i, steps) for i, steps in enumerate(forecaster.horizons) if steps in wanted] or \
            list(enumerate(forecaster.horizons))
        return [(i, steps * self.settings.sensor_window_s // 60) for i, steps in columns]

    def _forecast(self, forecaster: TrafficForecaster, result: StepResult, index: int,
                  processed_at: int) -> TrafficForecast:
        imputed = bool(result.imputed[index])
        return TrafficForecast(
            sensor_id=forecaster.network.sensor_ids[index], network=forecaster.network.name,
            window_end=result.window_end_ms, observed=None if imputed else float(result.values[index]),
            imputed=imputed, horizons=[self._horizon(forecaster, result, index, h, m)
                                       for h, m in self._published_horizons(forecaster)],
            model_version=forecaster.version, processed_at=processed_at, kind=_reading_kind(forecaster),
            unit=forecaster.unit or None)

    @staticmethod
    def _horizon(forecaster: TrafficForecaster, result: StepResult, index: int, column: int,
                 minutes: int) -> HorizonForecast:
        value = float(result.forecasts[index, column])
        return HorizonForecast(minutes=minutes, value=value, speed=value if forecaster.kind == "speed" else None,
                               source=result.sources[column] if result.sources else None)

    def _score_forecasts(self, network: str, result: StepResult) -> None:
        """Online MAE per horizon: each observed value against the forecast made for it earlier."""
        by_horizon: dict[int, list[float]] = defaultdict(list)
        for minutes, error in self.alerts[network].horizon_errors(result):
            by_horizon[minutes].append(error)
        for minutes, errors in by_horizon.items():
            summary = self.metrics.forecast_abs_error.labels(horizon_minutes=str(minutes))
            for error in errors:
                summary.observe(error)

    def _encode(self, network: str) -> bytes:
        forecaster, alerts = self.forecasters.get(network), self.alerts.get(network)
        stored = _StoredNetwork(sensors=list(forecaster.network.sensor_ids) if forecaster else [],
                                forecaster=forecaster.state_bytes() if forecaster else b"",
                                pending=self.pending[network], alerts=alerts.to_bytes() if alerts else b"")
        return _network_encoder.encode(stored)

    def _restore(self, network: str) -> None:
        """Recover a network's state from the store the first time this process sees it."""
        if network in self.forecasters or network in self.pending:
            return
        raw = self.store.get(network.encode())
        if not raw:
            return
        stored = _network_decoder.decode(raw)
        self.pending[network] = dict(stored.pending)
        if stored.forecaster:
            forecaster = self.forecaster_for(network, dict.fromkeys(stored.sensors, 0.0))
            self.forecasters[network] = forecaster.from_state_bytes(stored.forecaster)
            self.alerts[network].load(stored.alerts)


def _is_reading_kind(kind: str) -> TypeGuard[ReadingKind]:
    return kind in READING_KINDS


def _reading_kind(forecaster: TrafficForecaster) -> ReadingKind:
    """The forecaster's kind as the wire format names it (training only writes those kinds into a checkpoint)."""
    if not _is_reading_kind(forecaster.kind):
        raise ModelError(f"the model {forecaster.version} of network {forecaster.network.name!r} forecasts kind "
                         f"{forecaster.kind!r}, not one of {', '.join(READING_KINDS)}: retrain it with stream-app "
                         "train traffic")
    return forecaster.kind
