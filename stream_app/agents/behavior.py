"""The behavior pipeline's transport: user events in batches, predictions and cell events out.

Two hot paths, chosen by ``settings.hot_path``:

- ``transport`` (``behavior_transport``): the batch-native ``stream_app.transport.Transport``
  consumes ``user-events`` in its own consumer group, keeps users in its per-partition ``users``
  store (changelogged, restored on assignment) and checkpoints state, outputs and offsets together;
  Faust only runs it as a service beside the web server and timers.
- ``faust`` (``attach_behavior_agent``): a Faust agent takes a micro-batch, validates it, calls
  the pipeline and sends what it returns; the pipeline's write-behind users reach the table just
  before Faust commits the input offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import faust
from aiokafka.structs import ConsumerRecord
from faust.types import ConsumerT

from schemas import Rejection, UserEvent, decode_user_event
from schemas.validation import decode_each
from stream_app import kafka_io
from stream_app.agents.transports import transport_config
from stream_app.ingest import validate_batch
from stream_app.lag import attach_transport_lag
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received
from stream_app.pipelines.behavior import BehaviorPipeline
from stream_app.sending import kafka_producer, partition_count, send_records
from stream_app.settings import Settings
from stream_app.tables import Tables, ready_for_writes
from stream_app.topics import TOPIC_NAMES, Topics
from stream_app.transport import Batch, Outputs, Transport, TransportConfig, TransportMetrics
from stream_app.transport.service import attach_transport_service

__all__ = ["attach_behavior_timers", "attach_behavior_agent", "BehaviorTransport", "attach_transport"]

log = logging.getLogger(__name__)
USERS_STORE = "users"

MODEL_REFRESH_S = 2.0


class _FlushStatesBeforeCommit(faust.Sensor):
    """Faust calls this when it starts an offset commit, before it works out which offsets are done
    and flushes the producer: every acknowledged event's state change reaches the changelog first."""

    def __init__(self, pipeline: BehaviorPipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    def on_commit_initiated(self, consumer: ConsumerT) -> None:
        self.pipeline.flush()


def attach_behavior_timers(app: faust.App, settings: Settings, pipeline: BehaviorPipeline) -> None:
    """The model reload and state expiry timers of ``pipeline`` (either hot path)."""

    async def reload_model() -> None:
        pipeline.model.refresh()

    async def expire_idle_users() -> None:
        pipeline.expire_idle()

    app.timer(MODEL_REFRESH_S, name="reload-model")(reload_model)
    app.timer(settings.expiry_interval_s, name="expire-idle-users")(expire_idle_users)


def attach_behavior_agent(app: faust.App, settings: Settings, topics: Topics, tables: Tables, metrics: Metrics,
                          pipeline: BehaviorPipeline) -> None:
    """Run ``pipeline`` on ``user-events`` as a Faust agent, with the commit hook (the faust hot path)."""
    app.sensors.add(_FlushStatesBeforeCommit(pipeline))

    async def flush_on_shutdown(app: faust.App, **kwargs: Any) -> None:
        # Runs before the app's last producer flush; the consumer's final commit follows it.
        pipeline.flush()

    async def handle(valid: list[Received[UserEvent]]) -> None:
        producer = await kafka_producer(app)
        cell_partitions = await partition_count(producer, topics.cell_events.get_topic_name())
        outputs = pipeline.process(valid, cell_partitions)
        await send_records(producer, topics.predictions.get_topic_name(), outputs.predictions)
        await send_records(producer, topics.cell_events.get_topic_name(), outputs.cell_events)
        await send_records(producer, topics.anomaly_alerts.get_topic_name(), outputs.alerts)
        pipeline.emitted(outputs)

    async def behavior(stream: faust.Stream[bytes]) -> None:
        await ready_for_writes(app, topics, tables.user_state)
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            valid = await validate_batch(batch, decode_user_event, metrics, topics.dead_letters)
            if not valid:
                continue
            if settings.behavior_mode == "unbatched":  # one model step per event (benchmarks)
                for one in valid:
                    await handle([one])
            else:
                await handle(valid)

    # faust's signal receiver type (sync or async, sender positional) rejects an async def receiver
    app.on_before_shutdown.connect(flush_on_shutdown)  # type: ignore[arg-type]
    app.agent(topics.user_events, name="behavior")(behavior)  # type: ignore[arg-type]  # faust types agents on StreamT, which lacks take_events


class BehaviorTransport:
    """``pipeline`` on ``user-events`` through the batch-native transport (the transport hot path).

    Records whose key is not their ``user_id`` are dead-lettered (``key_mismatch``): re-keying them
    would need a repartition topic, and accepting them would split that user's state between workers.
    The pipeline is switched to the transport's ``users`` store once the transport has started, and
    forgets the users it cached from partitions whose stores are reloaded or given up.
    """

    def __init__(self, settings: Settings, metrics: Metrics, pipeline: BehaviorPipeline, advertised_url: str) -> None:
        self.settings, self.pipeline = settings, pipeline
        self.predictions_topic = settings.topic("next-action-predictions")
        self.cells_topic = settings.topic("cell-events")
        self.alerts_topic = settings.topic("anomaly-alerts")
        self.cell_partitions = settings.partitions  # the topic's real count is read in start()
        self.transport: Transport[Received[UserEvent]] = Transport(
            _transport_config(settings, advertised_url), decode=_decode_user_events, process=self.process,
            id_of=_user_id, id_name="user_id", listener=self, before_checkpoint=pipeline.flush,
            metrics=TransportMetrics.create(metrics.registry, consumed=metrics.events_consumed,
                                            dead_letters=metrics.dead_letters, outputs=metrics.outputs))

    async def start(self) -> None:
        """Create the app's missing topics, join the group, serve state from the transport's store."""
        settings = self.settings
        await kafka_io.ensure_topics(settings, [settings.topic(name) for name in TOPIC_NAMES])
        self.cell_partitions = (await kafka_io.partition_counts(settings, [self.cells_topic]))[self.cells_topic]
        await self.transport.start()
        if not self.transport.closed:  # closed: stopped while starting
            self.pipeline.store = self.transport.store_view(USERS_STORE)

    def process(self, batch: Batch[Received[UserEvent]]) -> Outputs:
        valid = [received for records in batch.records.values() for received in records]
        outputs = self.pipeline.process(valid, self.cell_partitions)
        self.pipeline.emitted(outputs, count_outputs=False)  # the transport counts what it writes
        return {self.predictions_topic: outputs.predictions, self.cells_topic: outputs.cell_events,
                self.alerts_topic: outputs.alerts}

    def on_assigned(self, partitions: frozenset[int]) -> None:
        self._forget(partitions)

    def on_revoked(self, partitions: frozenset[int]) -> None:
        self._forget(partitions)

    def _forget(self, partitions: frozenset[int]) -> None:
        if not partitions:
            return
        dropped = self.pipeline.forget(lambda key: self.transport.partition_for(key) in partitions)
        if dropped:
            log.info("partitions %s reloaded or revoked: %d unflushed users dropped (reprocessed from the "
                     "committed offsets)", sorted(partitions), dropped)


def attach_transport(app: faust.App, hot_path: BehaviorTransport) -> None:
    """Run ``hot_path`` as a service of ``app``: started with the app, stopped with it after a last
    checkpoint (at once, without one, when stopped while starting); an error in the transport (a
    pipeline bug) stops the worker."""
    attach_transport_service(app, hot_path.transport, hot_path.start, "behavior transport")
    attach_transport_lag(app, hot_path.transport, hot_path.pipeline.metrics)


def _transport_config(settings: Settings, advertised_url: str) -> TransportConfig:
    return transport_config(settings, advertised_url, name="behavior", input_topic="user-events", store=USERS_STORE,
                            fetch_timeout_s=settings.batch_within_s)


def _decode_user_events(records: Sequence[ConsumerRecord]) -> list[Any]:
    events = decode_each([record.value for record in records], UserEvent)
    return [event if isinstance(event, Rejection) else Received(event, record.timestamp / 1000, record.partition,
                                                                 record.offset)
            for event, record in zip(events, records, strict=True)]


def _user_id(received: Received[UserEvent]) -> str:
    return received.value.user_id
