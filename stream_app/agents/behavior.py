"""The behavior pipeline's transport: user events in batches, predictions and cell events out.

The agent takes a micro-batch, validates it (rejections to dead letters), calls the pipeline and
sends what it returns as one record batch per partition. The pipeline writes its state behind:
the users it changed are written to the table just before Faust commits the input offsets (and
flushes the producer), so the table's changelog and the committed offsets describe the same events.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import ConsumerT

from schemas import UserEvent, decode_user_event
from stream_app.ingest import validate_batch
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received
from stream_app.pipelines.behavior import BehaviorPipeline
from stream_app.sending import kafka_producer, partition_count, send_records
from stream_app.settings import Settings
from stream_app.tables import Tables, ready_for_writes
from stream_app.topics import Topics

__all__ = ["attach_behavior"]

MODEL_REFRESH_S = 2.0


class _FlushStatesBeforeCommit(faust.Sensor):
    """Faust calls this when it starts an offset commit, before it works out which offsets are done
    and flushes the producer: every acknowledged event's state change reaches the changelog first."""

    def __init__(self, pipeline: BehaviorPipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    def on_commit_initiated(self, consumer: ConsumerT) -> None:
        self.pipeline.flush()


def attach_behavior(app: faust.App, settings: Settings, topics: Topics, tables: Tables, metrics: Metrics,
                    pipeline: BehaviorPipeline) -> None:
    """Run ``pipeline`` on ``user-events`` in ``app``: the agent, the commit hook, the model reload
    and state expiry timers."""
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

    async def reload_model() -> None:
        pipeline.model.refresh()

    async def expire_idle_users() -> None:
        pipeline.expire_idle()

    app.on_before_shutdown.connect(flush_on_shutdown)
    app.agent(topics.user_events, name="behavior")(behavior)
    app.timer(MODEL_REFRESH_S, name="reload-model")(reload_model)
    app.timer(settings.expiry_interval_s, name="expire-idle-users")(expire_idle_users)
