"""Traffic readings -> per-sensor windows -> network snapshots -> forecasts and alerts."""

from __future__ import annotations

from schemas import decode_traffic_reading
from stream_app.app import app, settings
from stream_app.ingest import validate_batch
from stream_app.metrics import METRICS
from stream_app.topics import traffic_readings

__all__ = ["sensor_windows"]


@app.agent(traffic_readings)
async def sensor_windows(stream):
    async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
        valid = await validate_batch(batch, decode_traffic_reading)
        METRICS.events_processed.labels(pipeline="traffic").inc(len(valid))
