"""The cell-activity stage: ``cell-events`` in batches, closed windows and crowd alerts out.

Two paths, chosen with the behavior stage's ``settings.hot_path``:

- ``transport`` (:class:`CellTransport`): the batch-native ``stream_app.transport.Transport``
  consumes ``cell-events`` in its own consumer group; each partition's cells, watermark, replay
  marks and crowd rhythm live in that partition's ``cells`` store (changelogged, restored when the
  partition is assigned), and the transport's punctuator closes the windows of idle partitions, so
  every window it emits is inside a checkpoint with the state that says it was emitted.
- ``faust`` (``attach_cells``): a Faust agent and a Faust table keyed by cell, with a Faust timer
  closing idle windows; progress (watermark, replay marks) is not kept across restarts there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import faust
import msgspec
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from stream_app import kafka_io
from stream_app.agents.transports import transport_config
from stream_app.metrics import Metrics
from stream_app.pipelines.base import StateStore
from stream_app.pipelines.cells import CellEvent, CellPipeline, decode_cell_events
from stream_app.sending import kafka_producer, send_records
from stream_app.settings import Settings
from stream_app.tables import Tables, ready_for_writes
from stream_app.topics import TOPIC_NAMES, Topics
from stream_app.transport import Batch, Outputs, Rejected, State, Transport, TransportConfig, TransportMetrics
from stream_app.transport.service import attach_transport_service

__all__ = ["attach_cells", "CellTransport", "attach_cell_transport", "CELLS_STORE", "IDLE_CLOSE_S"]

#: How often idle partitions' windows are closed (the punctuator's or the Faust timer's interval).
IDLE_CLOSE_S = 1.0
CELLS_STORE = "cells"
_FAUST_PARTITION = 0  # the Faust path keeps every cell in one table: one logical partition

log = logging.getLogger(__name__)


class CellTransport:
    """The cell pipeline on ``cell-events`` through the batch-native transport.

    A partition's cells are (re)built from its ``cells`` store whenever the transport (re)loads that
    store (assignment, or a rewind after a failed checkpoint) and forgotten when it is revoked or
    fenced. ``transport_metrics``: the collectors another transport of the app already declared on
    its registry (one registry takes each series once); created here when None.
    """

    def __init__(self, settings: Settings, metrics: Metrics, pipeline: CellPipeline, advertised_url: str = "",
                 transport_metrics: TransportMetrics | None = None) -> None:
        self.settings, self.pipeline = settings, pipeline
        pipeline.write_behind = True  # flushed by the transport at each checkpoint
        self.input_topic = settings.topic("cell-events")
        self.activity_topic = settings.topic("cell-activity")
        self.alerts_topic = settings.topic("anomaly-alerts")
        self.transport: Transport[list[CellEvent]] = Transport(
            _transport_config(settings, advertised_url), decode=_decode_cell_records, process=self.process,
            listener=self, punctuate=self.punctuate, before_checkpoint=pipeline.flush,
            metrics=transport_metrics or TransportMetrics.create(metrics.registry, consumed=metrics.events_consumed,
                                                                 dead_letters=metrics.dead_letters,
                                                                 outputs=metrics.outputs))

    async def start(self) -> None:
        """Create the app's missing topics, learn how many ``user-events`` partitions feed the
        watermark, join the group."""
        settings = self.settings
        await kafka_io.ensure_topics(settings, [settings.topic(name) for name in TOPIC_NAMES])
        sources = settings.topic("user-events")
        self.pipeline.sources = (await kafka_io.partition_counts(settings, [sources])).get(sources,
                                                                                          settings.partitions)
        await self.transport.start()

    def process(self, batch: Batch[list[CellEvent]]) -> Outputs:
        closed = []
        for partition, records in batch.records.items():
            self._ensure_loaded(partition, batch.state)
            closed += self.pipeline.process(partition, records)
        return {self.activity_topic: closed, self.alerts_topic: self.pipeline.take_alerts()}

    def punctuate(self, partitions: frozenset[int], state: State) -> Outputs:
        """Close what the watermark passed while no record came (idle sources stop holding it back)."""
        for partition in partitions:
            self._ensure_loaded(partition, state)
        closed = self.pipeline.close_windows(sorted(partitions))
        return {self.activity_topic: closed, self.alerts_topic: self.pipeline.take_alerts()}

    def on_assigned(self, partitions: frozenset[int]) -> None:
        """These partitions' stores were restored: their cells are rebuilt from them at their next use."""
        self.pipeline.drop(partitions)

    def on_revoked(self, partitions: frozenset[int]) -> None:
        self.pipeline.drop(partitions)

    def _ensure_loaded(self, partition: int, state: State) -> None:
        if partition not in self.pipeline.partitions:
            self.pipeline.load(partition, state.store(partition, CELLS_STORE))


def attach_cell_transport(app: faust.App, cells: CellTransport) -> None:
    """Run ``cells`` as a service of ``app`` (``attach_transport_service``): started with it, stopped
    with it after a last checkpoint; an error in the transport (a pipeline bug) stops the worker."""
    attach_transport_service(app, cells.transport, cells.start, "cell transport")


def attach_cells(app: faust.App, settings: Settings, topics: Topics, tables: Tables, pipeline: CellPipeline) -> None:
    """Run ``pipeline`` on ``cell-events`` as a Faust agent over the cell table (the faust hot path),
    and close windows from a timer when no record comes."""
    activity_topic = topics.cell_activity.get_topic_name()
    alerts_topic = topics.anomaly_alerts.get_topic_name()

    def loaded() -> None:
        if _FAUST_PARTITION not in pipeline.partitions:  # after the table's recovery: its cells
            pipeline.load(_FAUST_PARTITION, cast(StateStore, tables.cell_windows), own_progress=False)

    async def count_cells(stream: faust.Stream[bytes]) -> None:
        await ready_for_writes(app, topics, tables.cell_windows)
        async for batch in stream.take_events(settings.batch_max, within=settings.cell_batch_within_s):
            loaded()
            closed = pipeline.process(_FAUST_PARTITION, [_cell_events(e.message.value) for e in batch])
            producer = await kafka_producer(app)
            await send_records(producer, activity_topic, closed)
            await send_records(producer, alerts_topic, pipeline.take_alerts())

    # Windows closed by the timer but not yet handed to the producer (it was full): sent next tick.
    unsent: dict[str, list[tuple[bytes, bytes]]] = {activity_topic: [], alerts_topic: []}

    async def close_idle_cell_windows() -> None:
        """Idle partitions stop holding the watermark back: their windows close without a record.
        A producer that stays full past its timeout must not crash the worker nor lose the windows."""
        if _FAUST_PARTITION not in pipeline.partitions:
            return
        unsent[activity_topic].extend(pipeline.close_windows([_FAUST_PARTITION]))
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


def _transport_config(settings: Settings, advertised_url: str) -> TransportConfig:
    return transport_config(settings, advertised_url, name="cells", input_topic="cell-events", store=CELLS_STORE,
                            fetch_timeout_s=min(settings.cell_batch_within_s, IDLE_CLOSE_S),
                            punctuate_interval_s=IDLE_CLOSE_S)


def _decode_cell_records(records: Sequence[ConsumerRecord]) -> list[Any]:
    """Each record's events, or a rejection (dead-lettered) for bytes that are not cell events."""
    out: list[Any] = []
    for record in records:
        if record.value is None:
            out.append(Rejected("malformed_cell_events", "a cell-events record has no value; only the behavior "
                                "stage should write to that topic"))
            continue
        try:
            out.append(decode_cell_events(record.value))
        except msgspec.DecodeError as exc:
            out.append(Rejected("malformed_cell_events", f"not a msgpack list of cell events: {exc}"[:500]))
    return out


def _cell_events(value: bytes | None) -> list[CellEvent]:
    """The events of one ``cell-events`` record (the behavior pipeline never writes one without a value)."""
    if value is None:
        raise ValueError("a cell-events record has no value; only the behavior pipeline should write to that topic")
    return decode_cell_events(value)
