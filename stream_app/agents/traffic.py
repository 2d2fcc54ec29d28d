"""The traffic pipeline's transport: readings -> sensor windows (stage 1) -> network snapshots (stage 2).

Stage 1 sends each closed sensor window to the internal ``sensor-aggregates`` topic, keyed by
network, so stage 2 gathers a network's snapshot on the one worker that owns that network.

- Stage 1 on the batch-native transport (``SensorTransport``, hot path ``transport``):
  ``traffic-readings`` in its own consumer group (``<app id>-sensors``), each input partition's
  sensors and stream time in its ``sensors`` store (changelogged, restored on assignment), idle
  windows closed by the transport's wall-clock punctuator, so the aggregates a window close emits
  are committed together with the state that says it closed.
- Stage 1 as a Faust agent with a Faust table and timer (``attach_sensor_agent``, hot path ``faust``).
- Stage 2 (``attach_network_steps``) stays a Faust agent on either path: one aggregate per sensor
  and 5-minute window is little input, and its query route is Faust's table routing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import faust
from aiokafka.structs import ConsumerRecord

from schemas import Rejection, SensorAggregate, TrafficReading, decode, decode_traffic_reading
from stream_app import kafka_io
from stream_app.agents.transports import transport_config
from stream_app.ingest import validate_batch
from stream_app.lag import attach_transport_lag
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received, StateStore
from stream_app.pipelines.traffic import NetworkSnapshots, SensorPartitions, SensorWindows, StoreOf
from stream_app.sending import kafka_producer, send_records
from stream_app.settings import Settings
from stream_app.tables import Tables, ready_for_writes
from stream_app.topics import TOPIC_NAMES, Topics
from stream_app.transport import (
    Batch,
    NotLocalError,
    Outputs,
    State,
    Transport,
    TransportConfig,
    TransportMetrics,
)
from stream_app.transport.service import attach_transport_service

__all__ = ["attach_traffic", "attach_traffic_transport", "attach_sensor_agent", "attach_network_steps",
           "SensorTransport", "SENSORS_STORE"]

SENSORS_STORE = "sensors"

IDLE_CLOSE_S = 1.0
MODEL_REFRESH_S = 2.0  # how often each network's checkpoint file is checked for a change


def attach_traffic(app: faust.App, settings: Settings, topics: Topics, tables: Tables, metrics: Metrics,
                   sensors: SensorWindows, networks: NetworkSnapshots) -> None:
    """Run both traffic stages in ``app`` as Faust agents (the faust hot path)."""
    attach_sensor_agent(app, settings, topics, tables, metrics, sensors)
    attach_network_steps(app, settings, topics, tables, metrics, networks)


def attach_traffic_transport(app: faust.App, settings: Settings, topics: Topics, tables: Tables, metrics: Metrics,
                             networks: NetworkSnapshots, advertised_url: str,
                             transport_metrics: TransportMetrics | None = None) -> SensorTransport:
    """Run stage 1 on the batch-native transport (a service of ``app``) and stage 2 as a Faust agent
    (the transport hot path). ``transport_metrics``: the series another transport of this worker
    already declared on the registry (declaring them twice is an error)."""
    sensors = SensorTransport(settings, metrics, SensorPartitions(settings, metrics), advertised_url,
                              transport_metrics)
    attach_transport_service(app, sensors.transport, sensors.start, "traffic transport")
    attach_transport_lag(app, sensors.transport, metrics)
    attach_network_steps(app, settings, topics, tables, metrics, networks)
    return sensors


def attach_sensor_agent(app: faust.App, settings: Settings, topics: Topics, tables: Tables, metrics: Metrics,
                        sensors: SensorWindows) -> None:
    """Stage 1 as a Faust agent; a timer closes sensor windows when no reading comes."""
    aggregates_topic = topics.sensor_aggregates.get_topic_name()

    async def sensor_windows(stream: faust.Stream[bytes]) -> None:
        await ready_for_writes(app, topics, tables.sensor_windows)
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            valid = await validate_batch(batch, decode_traffic_reading, metrics, topics.dead_letters)
            await send_records(await kafka_producer(app), aggregates_topic, sensors.process(valid))

    async def close_idle_sensor_windows() -> None:
        """Idle partitions stop holding the watermark back: their windows close without a reading."""
        await send_records(await kafka_producer(app), aggregates_topic, sensors.close_windows())

    app.agent(topics.traffic_readings, name="sensor-windows")(sensor_windows)  # type: ignore[arg-type]  # faust types agents on StreamT, which lacks take_events
    app.timer(IDLE_CLOSE_S, name="close-idle-sensor-windows")(close_idle_sensor_windows)


def attach_network_steps(app: faust.App, settings: Settings, topics: Topics, tables: Tables, metrics: Metrics,
                         networks: NetworkSnapshots) -> None:
    """Stage 2 as a Faust agent; a timer reloads the networks' checkpoints when their files change."""
    decode_aggregate = partial(decode, cls=SensorAggregate)

    async def reload_traffic_models() -> None:
        networks.reload_models()

    async def network_steps(stream: faust.Stream[bytes]) -> None:
        await ready_for_writes(app, topics, tables.network_state)
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            valid = await validate_batch(batch, decode_aggregate, metrics, topics.dead_letters)
            outputs = networks.process(received.value for received in valid)
            producer = await kafka_producer(app)
            await send_records(producer, topics.forecasts.get_topic_name(), outputs.forecasts)
            await send_records(producer, topics.anomaly_alerts.get_topic_name(), outputs.alerts)

    app.agent(topics.sensor_aggregates, name="network-steps")(network_steps)  # type: ignore[arg-type]  # faust types agents on StreamT, which lacks take_events
    app.timer(MODEL_REFRESH_S, name="reload-traffic-models")(reload_traffic_models)


class SensorTransport:
    """Stage 1 (``sensors``) on ``traffic-readings`` through the batch-native transport.

    Keys: producers key a reading by its ``sensor_id`` (``stream-app generate`` and ``replay``, the
    ``traffic-readings`` row of the topics table), and a sensor's windows live in the store of the
    partition that key hashes to. A reading whose key is not its ``sensor_id`` (or is null) is
    dead-lettered (``key_mismatch``), as user events are: accepting it would split the sensor's
    windows between partitions (and workers), and each copy would close with part of the readings.
    The network is not part of the key, so sensor ids are unique across networks, as stage 1 has
    always assumed. Readings that fail validation are dead-lettered with their reason by the transport.
    """

    def __init__(self, settings: Settings, metrics: Metrics, sensors: SensorPartitions, advertised_url: str,
                 transport_metrics: TransportMetrics | None = None) -> None:
        self.settings, self.sensors = settings, sensors
        self.aggregates_topic = settings.topic("sensor-aggregates")
        config = _transport_config(settings, advertised_url)
        self.close_every_partition = not config.exactly_once
        self.transport: Transport[Received[TrafficReading]] = Transport(
            config, decode=_decode_readings, process=self.process, id_of=_sensor_id, id_name="sensor_id",
            listener=self, punctuate=self.punctuate,
            metrics=transport_metrics or TransportMetrics.create(
                metrics.registry, consumed=metrics.events_consumed, dead_letters=metrics.dead_letters,
                outputs=metrics.outputs))

    async def start(self) -> None:
        """Create the app's missing topics and join the group (partitions are restored as they come)."""
        settings = self.settings
        await kafka_io.ensure_topics(settings, [settings.topic(name) for name in TOPIC_NAMES])
        await self.transport.start()

    def process(self, batch: Batch[Received[TrafficReading]]) -> Outputs:
        """A batch's readings into their partitions' windows; the aggregates of the windows that closed."""
        close = None if self.close_every_partition else batch.records.keys()
        return {self.aggregates_topic: self.sensors.process(batch.records, _stores(batch.state), close)}

    def punctuate(self, partitions: frozenset[int], state: State) -> Outputs:
        """The wall-clock timer: windows the watermark passed without a reading (idle or ended input)."""
        return {self.aggregates_topic: self.sensors.close_windows(partitions, _stores(state))}

    def on_assigned(self, partitions: frozenset[int]) -> None:
        self.sensors.assigned(partitions)

    def on_revoked(self, partitions: frozenset[int]) -> None:
        self.sensors.revoked(partitions)


def _stores(state: State) -> StoreOf:
    """The ``sensors`` store of an owned partition, None for one that is not (or no longer) local."""

    def store_of(partition: int) -> StateStore | None:
        try:
            return state.store(partition, SENSORS_STORE)
        except NotLocalError:
            return None

    return store_of


def _transport_config(settings: Settings, advertised_url: str) -> TransportConfig:
    return transport_config(settings, advertised_url, name="traffic", input_topic="traffic-readings",
                            store=SENSORS_STORE, fetch_timeout_s=settings.batch_within_s,
                            group_id=f"{settings.app_id}-{SENSORS_STORE}", punctuate_interval_s=IDLE_CLOSE_S)


def _decode_readings(records: Sequence[ConsumerRecord]) -> list[Any]:
    out: list[Any] = []
    for record in records:
        reading = decode_traffic_reading(record.value)
        out.append(reading if isinstance(reading, Rejection) else Received(reading, record.timestamp / 1000,
                                                                           record.partition, record.offset))
    return out


def _sensor_id(received: Received[TrafficReading]) -> str:
    return received.value.sensor_id
