"""User events -> per-user state -> next-action predictions (batched hot path)."""

from __future__ import annotations

from schemas import decode_user_event
from stream_app.app import app, settings
from stream_app.ingest import validate_batch
from stream_app.metrics import METRICS
from stream_app.topics import user_events

__all__ = ["behavior"]


@app.agent(user_events)
async def behavior(stream):
    async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
        valid = await validate_batch(batch, decode_user_event)
        METRICS.events_processed.labels(pipeline="behavior").inc(len(valid))
