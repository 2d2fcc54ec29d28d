"""The cell-activity pipeline's transport: ``cell-events`` in batches, closed windows and crowd alerts out."""

from __future__ import annotations

import logging

import faust
from aiokafka.errors import KafkaTimeoutError

from stream_app.pipelines.base import Received
from stream_app.pipelines.cells import CellEvent, CellPipeline, decode_cell_events
from stream_app.sending import kafka_producer, send_records
from stream_app.settings import Settings
from stream_app.tables import Tables, ready_for_writes
from stream_app.topics import Topics

__all__ = ["attach_cells"]

IDLE_CLOSE_S = 1.0

log = logging.getLogger(__name__)


def attach_cells(app: faust.App, settings: Settings, topics: Topics, tables: Tables, pipeline: CellPipeline) -> None:
    """Run ``pipeline`` on ``cell-events`` in ``app``, and close windows from a timer when no record comes."""
    activity_topic = topics.cell_activity.get_topic_name()
    alerts_topic = topics.anomaly_alerts.get_topic_name()

    async def count_cells(stream: faust.Stream[bytes]) -> None:
        await ready_for_writes(app, topics, tables.cell_windows)
        async for batch in stream.take_events(settings.batch_max, within=settings.cell_batch_within_s):
            received = [Received(_cell_events(e.message.value), e.message.timestamp, e.message.partition)
                        for e in batch]
            closed = pipeline.process(received)
            producer = await kafka_producer(app)
            await send_records(producer, activity_topic, closed)
            await send_records(producer, alerts_topic, pipeline.take_alerts())

    # Windows closed by the timer but not yet handed to the producer (it was full): sent next tick.
    unsent: dict[str, list[tuple[bytes, bytes]]] = {activity_topic: [], alerts_topic: []}

    async def close_idle_cell_windows() -> None:
        """Idle partitions stop holding the watermark back: their windows close without a record.
        A producer that stays full past its timeout must not crash the worker nor lose the windows."""
        unsent[activity_topic].extend(pipeline.close_windows())
        unsent[alerts_topic].extend(pipeline.take_alerts())
        producer = await kafka_producer(app)
        for topic, records in unsent.items():
            try:
                await send_records(producer, topic, records)
            except KafkaTimeoutError:
                log.warning("producer buffer full: %d %s records wait for the next tick", len(records), topic)
                return
            records.clear()

    app.agent(topics.cell_events, name="count-cells")(count_cells)  # type: ignore[arg-type]  # faust types agents on StreamT, which lacks take_events
    app.timer(IDLE_CLOSE_S, name="close-idle-cell-windows")(close_idle_cell_windows)


def _cell_events(value: bytes | None) -> list[CellEvent]:
    """The events of one ``cell-events`` record (the behavior pipeline never writes one without a value)."""
    if value is None:
        raise ValueError("a cell-events record has no value; only the behavior pipeline should write to that topic")
    return decode_cell_events(value)
