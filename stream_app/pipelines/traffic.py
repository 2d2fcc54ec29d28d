"""Traffic readings -> per-sensor windows -> network snapshots -> forecasts and alerts.

Stage 1 (key: sensor): tumbling event-time windows per sensor, closed by the watermark (the
smallest of the partitions' latest event times, minus the grace period); a reading for a window
already closed is counted late and dropped. Each closed window becomes a ``SensorAggregate``
record keyed by network. :class:`SensorPartitions` keeps each input partition's sensors and stream
time apart, in that partition's store (the batch-native transport); :class:`SensorWindows` keeps
them in one table (the Faust agent of ``STREAM_APP_HOT_PATH=faust``).

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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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

__all__ = ["SensorWindows", "SensorPartitions", "StoreOf", "PARTITION_KEY", "NetworkSnapshots", "NetworkOutputs"]

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


class _StoredPartition(msgspec.Struct, array_like=True):
    stream_time: int  # the largest event time read from the partition (Kafka Streams' stream time)


_sensor_encoder, _sensor_decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_StoredSensor)
_partition_decoder = msgspec.msgpack.Decoder(_StoredPartition)
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
        return _sensor_aggregate(sensor_id, network, start, self.window_ms, window)

    def _encode(self, sensor_id: str) -> bytes:
        return _encode_sensor(self.windows, self.sensor_network[sensor_id], sensor_id)

    def _restore_once(self) -> None:
        """Open windows of this worker's sensors, as the store holds them (once, before the first batch)."""
        if self._restored:
            return
        self._restored = True
        for key, raw in list(self.store.items()):
            _load_sensor(self.windows, self.sensor_network, key.decode(), raw)


def _sensor_aggregate(sensor_id: str, network: str, start: int, window_ms: int, window: SpeedWindow
                      ) -> SensorAggregate:
    return SensorAggregate(sensor_id=sensor_id, network=network, window_start=start, window_end=start + window_ms,
                           mean_speed=window.mean, min_speed=window.low, max_speed=window.high, count=window.count,
                           flow_sum=window.flow)


def _encode_sensor(windows: EventTimeWindows[SpeedWindow], network: str, sensor_id: str) -> bytes:
    """A sensor's open windows and how far its windows are closed, as stored."""
    open_windows = {start: (w.count, w.total, w.low, w.high, w.flow)
                    for start, w in windows.open.get(sensor_id, {}).items()}
    return _sensor_encoder.encode(_StoredSensor(network=network, windows=open_windows,
                                                closed_until=windows.closed_until.get(sensor_id, -1)))


def _load_sensor(windows: EventTimeWindows[SpeedWindow], networks: dict[str, str], sensor_id: str, raw: bytes) -> None:
    """Put a stored sensor back into ``windows`` and ``networks``."""
    stored = _sensor_decoder.decode(raw)
    networks[sensor_id] = stored.network
    windows.closed_until[sensor_id] = stored.closed_until
    for start, (count, total, low, high, flow) in stored.windows.items():
        windows.open.setdefault(sensor_id, {})[start] = SpeedWindow(count, total, low, high, flow)


#: Where a partition's own entry (its stream time) lives in its store: no sensor id is empty.
PARTITION_KEY = b""

#: The store of one owned input partition, or None when it is not (or no longer) local.
StoreOf = Callable[[int], StateStore | None]


@dataclass
class _SensorPartition:
    """One input partition's sensors (open windows, networks) and how far its event time got."""

    windows: EventTimeWindows[SpeedWindow]
    networks: dict[str, str]
    stream_time: int | None  # the largest event time read from this partition; None before the first
    heard_at: float  # wall clock of its last reading, or of its (re)load


class SensorPartitions:
    """Stage 1 with each input partition's state apart, in that partition's store (the transport).

    A partition's store holds its sensors (open windows and ``closed_until``, one entry per sensor)
    and its stream time (under ``PARTITION_KEY``): after a crash a partition comes back exactly as
    its committed offset had seen it, whichever worker restores it. The transport's listener hooks
    say which partitions this worker owns (:meth:`assigned`, :meth:`revoked`); an assigned
    partition is read back from its store at the next call, a revoked one forgotten.

    The watermark is that of :class:`stream_app.windows.Watermark` over the partitions owned here:
    the smallest stream time of the active ones minus the grace; a partition silent (or unread
    since its assignment) for ``watermark_idle_s`` stops holding it back; when all are silent the
    input is taken as ended for now and it moves a window past the latest reading, then with
    processing time. Keeping the partitions in step is what lets stage 2 find a network's sensors
    of one window together. It restarts from the stores' stream times when the owned partitions
    change, so a partition taken over from a slower worker is not closed early.

    Which partitions' windows a call closes is the caller's: in ``at_least_once`` every owned one
    (one checkpoint covers them all); in ``exactly_once`` only the call's own, whose transaction
    carries both the aggregates and the state that says they were sent.
    """

    def __init__(self, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_ms = settings.sensor_window_s * 1000
        self.grace_ms = int(settings.grace_s * 1000)
        self.idle_s = settings.watermark_idle_s
        self.clock = clock
        self.partitions: dict[int, _SensorPartition] = {}
        self._unread: dict[int, float] = {}  # assigned, not yet read from its store: when it was assigned
        self._watermark: int | None = None
        self._batch_size = metrics.batch_size.labels(pipeline=PIPELINE)
        self._processed = metrics.events_processed.labels(pipeline=PIPELINE)
        self._late = metrics.late_events.labels(pipeline=PIPELINE)
        self._closed = metrics.windows_closed.labels(kind="sensor")

    # ------------------------------------------------------------ ownership (the transport's listener)

    def assigned(self, partitions: Collection[int]) -> None:
        """These partitions' stores were (re)loaded: drop what was read from them before; read them again."""
        now = self.clock()
        for partition in partitions:
            self.partitions.pop(partition, None)
            self._unread[partition] = now
        self._watermark = None if partitions else self._watermark

    def revoked(self, partitions: Collection[int]) -> None:
        """These partitions' stores are gone from this worker: forget them."""
        for partition in partitions:
            self.partitions.pop(partition, None)
            self._unread.pop(partition, None)
        self._watermark = None if partitions else self._watermark

    # ------------------------------------------------------------ calls

    def process(self, records: Mapping[int, Sequence[Received[TrafficReading]]], store_of: StoreOf,
                close: Collection[int] | None = None) -> list[Record]:
        """Add each partition's valid readings (offset order); the ``sensor-aggregates`` records of the
        windows that closed in the ``close`` partitions (default: every owned one)."""
        self._read_unread(store_of)
        now, late, count = self.clock(), 0, 0
        touched: dict[int, set[str]] = {}
        for partition, readings in records.items():
            if not readings:
                continue
            state = self._partition(partition, store_of)
            touched[partition] = changed = {""}  # "": the stream time moved
            stream_time = state.stream_time
            for received in readings:
                reading = received.value
                ts = epoch_ms(reading.ts)
                if stream_time is None or ts > stream_time:
                    stream_time = ts
                state.networks[reading.sensor_id] = reading.network
                if state.windows.add(reading.sensor_id, ts, reading.measured, reading.flow):
                    changed.add(reading.sensor_id)
                else:
                    late += 1
            state.stream_time, state.heard_at = stream_time, now
            count += len(readings)
        if late:
            self._late.inc(late)
        self._batch_size.observe(count)
        aggregates = self._close(self.partitions if close is None else close, store_of, touched)
        self._processed.inc(count)
        return aggregates

    def close_windows(self, partitions: Collection[int], store_of: StoreOf) -> list[Record]:
        """The aggregates of every window of ``partitions`` the watermark passed (the wall-clock timer:
        idle partitions stop holding it back, and an ended input closes its last windows)."""
        self._read_unread(store_of)
        return self._close(partitions, store_of, {})

    def watermark(self) -> int | None:
        """Event time up to which every window may close (None until the owned partitions allow one)."""
        now = self.clock()
        owned = [(p.stream_time, p.heard_at) for p in self.partitions.values()]
        owned += [(None, assigned_at) for assigned_at in self._unread.values()]
        active = [stream_time for stream_time, heard_at in owned if now - heard_at <= self.idle_s]
        known = [stream_time for stream_time, _ in owned if stream_time is not None]
        if not known or None in active:  # an active partition that has not been read may hold older windows
            return self._watermark
        if active:
            candidate = min(t for t in active if t is not None) - self.grace_ms
        else:  # every partition silent: the input ended for now (see stream_app.windows)
            silent_for = now - max(heard_at for _, heard_at in owned) - self.idle_s
            candidate = max(known) + self.window_ms + int(silent_for * 1000)
        self._watermark = candidate if self._watermark is None else max(self._watermark, candidate)
        return self._watermark

    # ------------------------------------------------------------ state

    def _read_unread(self, store_of: StoreOf) -> None:
        for partition in list(self._unread):
            store = store_of(partition)
            if store is not None:
                self.partitions[partition] = self._read(store, self._unread.pop(partition))

    def _partition(self, partition: int, store_of: StoreOf) -> _SensorPartition:
        """A partition's state, read from its store the first time this worker sees it."""
        state = self.partitions.get(partition)
        if state is None:
            store = store_of(partition)
            assigned_at = self._unread.pop(partition, self.clock())
            state = self.partitions[partition] = self._read({} if store is None else store, assigned_at)
        return state

    def _read(self, store: StateStore, heard_at: float) -> _SensorPartition:
        state = _SensorPartition(EventTimeWindows(size_ms=self.window_ms, new_window=SpeedWindow), {}, None, heard_at)
        for key, raw in list(store.items()):
            if key == PARTITION_KEY:
                state.stream_time = _partition_decoder.decode(raw).stream_time
            else:
                _load_sensor(state.windows, state.networks, key.decode(), raw)
        return state

    def _close(self, partitions: Iterable[int], store_of: StoreOf, touched: dict[int, set[str]]) -> list[Record]:
        """Close what the watermark passed in ``partitions`` (in window order across them, so stage 2
        gets a window's sensors before the next window's); write every changed sensor back."""
        watermark = self.watermark()
        closed: list[tuple[int, str, int, SpeedWindow]] = []
        for partition in partitions:
            state = self.partitions.get(partition)
            if state is None or watermark is None:
                continue
            for sensor_id, start, window in state.windows.close(watermark):
                closed.append((start, sensor_id, partition, window))
                touched.setdefault(partition, set()).add(sensor_id)
        closed.sort(key=lambda entry: (entry[0], entry[1]))
        aggregates = []
        for start, sensor_id, partition, window in closed:
            network = self.partitions[partition].networks[sensor_id]
            aggregates.append((network.encode(), encode(_sensor_aggregate(sensor_id, network, start, self.window_ms,
                                                                          window))))
        if aggregates:
            self._closed.inc(len(aggregates))
        for partition, sensors in touched.items():
            self._write(partition, sensors, store_of)
        return aggregates

    def _write(self, partition: int, sensors: set[str], store_of: StoreOf) -> None:
        store, state = store_of(partition), self.partitions[partition]
        if store is None:
            return
        for sensor_id in sensors:
            if sensor_id:
                store[sensor_id.encode()] = _encode_sensor(state.windows, state.networks[sensor_id], sensor_id)
            elif state.stream_time is not None:
                store[PARTITION_KEY] = _sensor_encoder.encode(_StoredPartition(state.stream_time))


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
