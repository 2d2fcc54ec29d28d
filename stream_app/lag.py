"""Consumer lag per assigned input partition, exported as ``stream_app_consumer_lag``."""

from __future__ import annotations

import faust

from stream_app.metrics import Metrics

__all__ = ["ConsumerLag", "attach_consumer_lag"]


class ConsumerLag:
    """Highwater minus committed offset for each partition the app's consumer holds now.

    Series of partitions no longer assigned are removed, so a rebalance leaves no stale lag.
    """

    def __init__(self, app: faust.App, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self._exported: set[tuple[str, str]] = set()

    def export(self) -> None:
        consumer = self.app.consumer
        current: set[tuple[str, str]] = set()
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            committed = getattr(consumer, "_committed_offset", {}).get(tp)  # Faust has no public accessor
            if highwater is None:
                continue
            labels = (tp.topic, str(tp.partition))
            self.metrics.consumer_lag.labels(*labels).set(max(0, highwater - (committed or 0)))
            current.add(labels)
        for labels in self._exported - current:
            self.metrics.consumer_lag.remove(*labels)
        self._exported = current


def attach_consumer_lag(app: faust.App, metrics: Metrics, interval_s: float = 5.0) -> ConsumerLag:
    """Export the lag every ``interval_s`` from a timer of ``app``."""
    lag = ConsumerLag(app, metrics)

    async def export_consumer_lag() -> None:
        lag.export()

    app.timer(interval_s, name="export-consumer-lag")(export_consumer_lag)
    return lag
