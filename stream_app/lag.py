"""Consumer lag per assigned input partition, exported as ``stream_app_consumer_lag``.

Two sources: Faust's consumer (the topics its agents read) and each batch-native transport's own
consumer group (``user-events`` on the transport hot path), which Faust's consumer does not see.
"""

from __future__ import annotations

from typing import Any

import faust

from stream_app.metrics import Metrics
from stream_app.transport import Transport

__all__ = ["ConsumerLag", "TransportLag", "attach_consumer_lag", "attach_transport_lag"]


class _LagSeries:
    """The ``stream_app_consumer_lag`` series one source sets; a partition it no longer reports
    (revoked at a rebalance) has its series removed, so no stale lag is left."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._exported: set[tuple[str, str]] = set()

    def publish(self, lags: dict[tuple[str, int], int]) -> None:
        current: set[tuple[str, str]] = set()
        for (topic, partition), lag in lags.items():
            labels = (topic, str(partition))
            self.metrics.consumer_lag.labels(*labels).set(lag)
            current.add(labels)
        for labels in self._exported - current:
            self.metrics.consumer_lag.remove(*labels)
        self._exported = current


class ConsumerLag(_LagSeries):
    """Highwater minus committed offset for each partition the app's (Faust's) consumer holds now."""

    def __init__(self, app: faust.App, metrics: Metrics) -> None:
        super().__init__(metrics)
        self.app = app

    def export(self) -> None:
        consumer = self.app.consumer
        lags = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            committed = getattr(consumer, "_committed_offset", {}).get(tp)  # Faust has no public accessor
            if highwater is not None:
                lags[(tp.topic, tp.partition)] = max(0, highwater - (committed or 0))
        self.publish(lags)


class TransportLag(_LagSeries):
    """End offset (as of the last fetch) minus committed offset for each input partition a
    transport owns (``Transport.lag``), labelled with the transport's input topic."""

    def __init__(self, transport: Transport[Any], metrics: Metrics) -> None:
        super().__init__(metrics)
        self.transport = transport

    def export(self) -> None:
        topic = self.transport.config.input_topic
        self.publish({(topic, partition): lag for partition, lag in self.transport.lag().items()})


def attach_consumer_lag(app: faust.App, metrics: Metrics, interval_s: float = 5.0) -> ConsumerLag:
    """Export the lag of Faust's consumer every ``interval_s`` from a timer of ``app``."""
    lag = ConsumerLag(app, metrics)

    async def export_consumer_lag() -> None:
        lag.export()

    app.timer(interval_s, name="export-consumer-lag")(export_consumer_lag)
    return lag


def attach_transport_lag(app: faust.App, transport: Transport[Any], metrics: Metrics,
                         interval_s: float = 5.0) -> TransportLag:
    """Export the lag of ``transport``'s input every ``interval_s`` from a timer of ``app``."""
    lag = TransportLag(transport, metrics)

    async def export_transport_lag() -> None:
        lag.export()

    app.timer(interval_s, name=f"export-{transport.config.name}-transport-lag")(export_transport_lag)
    return lag
