"""Every Prometheus series the workers export, declared in one place.

Labels are of bounded cardinality: pipeline names, topic names, rejection reasons, horizons,
alert kinds, partitions. Never a user or sensor id. Each app builds its own ``Metrics`` on its own
registry (``stream_app.app.create_app``); nothing is registered at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary

__all__ = ["Metrics", "LATENCY_BUCKETS", "BATCH_BUCKETS", "observe_many"]

# Hot-path latencies are sub-millisecond to a few hundred ms; end-to-end includes batching delay.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    """The collectors of one worker, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg
        self.events_consumed = Counter(
            "stream_app_events_consumed", "Records read from an input topic.", ["topic"], registry=reg)
        self.dead_letters = Counter(
            "stream_app_dead_letters", "Records routed to the dead-letter topic, by reason.",
            ["topic", "reason"], registry=reg)
        self.events_processed = Counter(
            "stream_app_events_processed", "Valid events applied by a pipeline.", ["pipeline"], registry=reg)
        self.last_processed = Gauge(
            "stream_app_last_processed_timestamp_seconds",
            "Wall-clock time (Unix s) at which a pipeline last finished a batch: set with events_processed.",
            ["pipeline"], registry=reg)
        self.late_events = Counter(
            "stream_app_late_events", "Events older than the key's event time by more than the grace period.",
            ["pipeline"], registry=reg)
        self.duplicates = Counter(
            "stream_app_duplicate_events",
            "Re-delivered events skipped: by event id (behavior), by source offset (cells).", ["pipeline"],
            registry=reg)
        self.batch_size = Histogram(
            "stream_app_batch_size", "Events per micro-batch handed to the model.", ["pipeline"],
            buckets=BATCH_BUCKETS, registry=reg)
        self.inference_latency = Histogram(
            "stream_app_inference_latency_seconds", "Wall time of one batched model step.", ["pipeline"],
            buckets=LATENCY_BUCKETS, registry=reg)
        self.end_to_end_latency = Histogram(
            "stream_app_end_to_end_latency_seconds",
            "From the input record's broker timestamp to the output's emit.", ["pipeline"],
            buckets=LATENCY_BUCKETS, registry=reg)
        self.outputs = Counter(
            "stream_app_outputs", "Messages emitted to an output topic.", ["topic"], registry=reg)
        self.active_users = Gauge(
            "stream_app_active_users", "Users with live state on this worker.", registry=reg)
        self.state_bytes = Gauge(
            "stream_app_state_bytes", "Encoded bytes of per-key state held by this worker.", ["table"],
            registry=reg)
        self.state_expired = Counter(
            "stream_app_state_expired", "Per-key states removed after the idle TTL.", ["table"], registry=reg)
        self.windows_closed = Counter(
            "stream_app_windows_closed", "Event-time windows closed and emitted.", ["kind"], registry=reg)
        self.sensors_imputed = Counter(
            "stream_app_sensors_imputed", "Sensor values imputed in a network snapshot.", registry=reg)
        self.anomaly_alerts = Counter(
            "stream_app_anomaly_alerts", "Anomaly alerts emitted, by kind.", ["kind"], registry=reg)
        self.model_info = Info(
            "stream_app_model", "Model version serving each pipeline.", ["pipeline"], registry=reg)
        self.model_reloads = Counter(
            "stream_app_model_reloads", "Checkpoint reload attempts (outcome loaded or failed) and checkpoint "
            "files found missing (outcome missing).", ["pipeline", "outcome"], registry=reg)
        self.model_fallback = Gauge(
            "stream_app_model_fallback", "1 while a pipeline serves its fallback although a checkpoint is configured.",
            ["pipeline"], registry=reg)
        self.online_hits = Counter(
            "stream_app_online_hits", "Predictions whose top-k held the user's actual next action.", ["k"],
            registry=reg)
        self.online_scored = Counter(
            "stream_app_online_scored", "Predictions scored against the user's actual next action.",
            registry=reg)
        self.forecast_abs_error = Summary(
            "stream_app_forecast_abs_error", "Absolute error of forecasts once observed (MAE = sum/count).",
            ["horizon_minutes"], registry=reg)
        self.consumer_lag = Gauge(
            "stream_app_consumer_lag", "Records between the committed offset and the end of a partition.",
            ["topic", "partition"], registry=reg)


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """Observe a batch's values in one update per bucket touched (a histogram child, e.g. ``.labels(...)``).

    ``Histogram.observe`` takes one value: per event, its lock and bucket walk cost about as much as
    a small pipeline step. The counts are the same as observing each value (a value goes in the first
    bucket whose upper bound it does not exceed); a histogram without prometheus-client's bucket
    fields is observed value by value.
    """
    if not len(values):
        return
    bounds, buckets, total = getattr(histogram, "_upper_bounds", None), getattr(histogram, "_buckets", None), \
        getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    array = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))
    total.inc(float(array.sum()))
    for index in np.flatnonzero(counts):
        buckets[index].inc(int(counts[index]))


def __getattr__(name: str) -> Metrics:
    # ``METRICS``: a catalogue of the series on a registry of its own, for the docs and deploy
    # tests that list them; built when asked for, never at import.
    if name == "METRICS":
        return Metrics()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
