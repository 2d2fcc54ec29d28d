"""Consumer lag per assigned input partition, exported as ``stream_app_consumer_lag``."""

from __future__ import annotations

from stream_app.app import app
from stream_app.metrics import METRICS

__all__ = ["export_consumer_lag"]

_exported: set[tuple[str, str]] = set()


@app.timer(5.0)
async def export_consumer_lag() -> None:
    """Highwater minus committed offset for each partition this worker consumes now.

    Series of partitions no longer assigned are removed, so a rebalance leaves no stale lag.
    """
    consumer = app.consumer
    current: set[tuple[str, str]] = set()
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        committed = consumer._committed_offset.get(tp)  # Faust keeps no public accessor for it
        if highwater is None:
            continue
        labels = (tp.topic, str(tp.partition))
        METRICS.consumer_lag.labels(*labels).set(max(0, highwater - (committed or 0)))
        current.add(labels)
    for labels in _exported - current:
        METRICS.consumer_lag.remove(*labels)
    _exported.clear()
    _exported.update(current)
