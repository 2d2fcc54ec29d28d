"""The transport's consumer lag series: one per owned partition, removed when the partition goes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from stream_app.lag import TransportLag
from stream_app.metrics import Metrics


class _FakeTransport:
    def __init__(self) -> None:
        self.config = SimpleNamespace(input_topic="user-events", name="behavior")
        self.lags: dict[int, int] = {}

    def lag(self) -> dict[int, int]:
        return dict(self.lags)


def _series(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {(s.labels["topic"], s.labels["partition"]): s.value
            for family in metrics.registry.collect() if family.name == "stream_app_consumer_lag"
            for s in family.samples}


def test_transport_lag_sets_one_series_per_partition_and_removes_revoked_ones() -> None:
    metrics, transport = Metrics(), _FakeTransport()
    lag = TransportLag(transport, metrics)  # type: ignore[arg-type]
    transport.lags = {0: 12, 1: 0}
    lag.export()
    assert _series(metrics) == {("user-events", "0"): 12.0, ("user-events", "1"): 0.0}
    transport.lags = {1: 3}  # partition 0 revoked at a rebalance
    lag.export()
    assert _series(metrics) == {("user-events", "1"): 3.0}


def test_transport_lag_leaves_other_sources_series_alone() -> None:
    metrics, transport = Metrics(), _FakeTransport()
    metrics.consumer_lag.labels("cell-events", "0").set(5)  # Faust's consumer's series
    transport.lags = {0: 1}
    lag: Any = TransportLag(transport, metrics)  # type: ignore[arg-type]
    lag.export()
    transport.lags = {}
    lag.export()
    assert _series(metrics) == {("cell-events", "0"): 5.0}
