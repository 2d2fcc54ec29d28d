"""The traffic pipeline's transport: readings -> sensor windows (stage 1) -> network snapshots (stage 2).

Stage 1 sends each closed sensor window to the internal ``sensor-aggregates`` topic, keyed by
network, so stage 2 gathers a network's snapshot on the one worker that owns that network.
"""

from __future__ import annotations

from functools import partial

import faust

from schemas import SensorAggregate, decode, decode_traffic_reading
from stream_app.ingest import validate_batch
from stream_app.metrics import Metrics
from stream_app.pipelines.traffic import NetworkSnapshots, SensorWindows
from stream_app.sending import kafka_producer, send_records
from stream_app.settings import Settings
from stream_app.tables import Tables, ready_for_writes
from stream_app.topics import Topics

__all__ = ["attach_traffic"]

IDLE_CLOSE_S = 1.0
MODEL_REFRESH_S = 2.0  # how often each network's checkpoint file is checked for a change


def attach_traffic(app: faust.App, settings: Settings, topics: Topics, tables: Tables, metrics: Metrics,
                   sensors: SensorWindows, networks: NetworkSnapshots) -> None:
    """Run both traffic stages in ``app``; timers close sensor windows when no reading comes and reload
    the networks' checkpoints when their files change."""
    aggregates_topic = topics.sensor_aggregates.get_topic_name()
    decode_aggregate = partial(decode, cls=SensorAggregate)

    async def sensor_windows(stream: faust.Stream[bytes]) -> None:
        await ready_for_writes(app, topics, tables.sensor_windows)
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            valid = await validate_batch(batch, decode_traffic_reading, metrics, topics.dead_letters)
            await send_records(await kafka_producer(app), aggregates_topic, sensors.process(valid))

    async def close_idle_sensor_windows() -> None:
        """Idle partitions stop holding the watermark back: their windows close without a reading."""
        await send_records(await kafka_producer(app), aggregates_topic, sensors.close_windows())

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

    app.agent(topics.traffic_readings, name="sensor-windows")(sensor_windows)  # type: ignore[arg-type]  # faust types agents on StreamT, which lacks take_events
    app.timer(IDLE_CLOSE_S, name="close-idle-sensor-windows")(close_idle_sensor_windows)
    app.agent(topics.sensor_aggregates, name="network-steps")(network_steps)  # type: ignore[arg-type]  # faust types agents on StreamT, which lacks take_events
    app.timer(MODEL_REFRESH_S, name="reload-traffic-models")(reload_traffic_models)
