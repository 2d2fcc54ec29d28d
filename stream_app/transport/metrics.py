"""The Prometheus collectors the transport updates: once per batch or checkpoint, never per record.

The app's own ``stream_app.metrics.Metrics`` already declares ``events_consumed``, ``dead_letters``
and ``outputs``; pass those in so the series stay the same, and ``TransportMetrics.create`` declares
the transport's own series on the same registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["TransportMetrics", "DURATION_BUCKETS", "BATCH_RECORD_BUCKETS"]

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_RECORD_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)


@dataclass(frozen=True)
class TransportMetrics:
    """Collectors by role; label names are fixed (see each declaration in ``create``)."""

    consumed: Counter            # [topic]
    dead_letters: Counter        # [topic, reason]
    outputs: Counter             # [topic]
    batch_records: Histogram     # [pipeline]
    process_seconds: Histogram   # [pipeline]
    checkpoint_seconds: Histogram  # [pipeline]
    checkpoint_failures: Counter   # [pipeline, stage]
    changelog_records: Counter   # [store]
    restored_records: Counter    # [store, source]
    restore_seconds: Histogram   # [pipeline]

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None, *, consumed: Counter | None = None,
               dead_letters: Counter | None = None, outputs: Counter | None = None) -> TransportMetrics:
        """Declare the transport's series on ``registry`` (a new one if None), reusing the app's
        ``consumed`` (labels topic), ``dead_letters`` (topic, reason) and ``outputs`` (topic) if given."""
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            consumed=consumed or Counter("stream_app_events_consumed", "Records read from an input topic.",
                                         ["topic"], registry=reg),
            dead_letters=dead_letters or Counter(
                "stream_app_dead_letters", "Records routed to the dead-letter topic, by reason.",
                ["topic", "reason"], registry=reg),
            outputs=outputs or Counter("stream_app_outputs", "Messages emitted to an output topic.", ["topic"],
                                       registry=reg),
            batch_records=Histogram(
                "stream_app_transport_batch_records", "Records per fetched batch handed to a pipeline.",
                ["pipeline"], buckets=BATCH_RECORD_BUCKETS, registry=reg),
            process_seconds=Histogram(
                "stream_app_transport_process_seconds", "Wall time of one pipeline call on a batch.",
                ["pipeline"], buckets=DURATION_BUCKETS, registry=reg),
            checkpoint_seconds=Histogram(
                "stream_app_transport_checkpoint_seconds",
                "Wall time of one checkpoint (changelog flush, outputs acknowledged, offsets committed).",
                ["pipeline"], buckets=DURATION_BUCKETS, registry=reg),
            checkpoint_failures=Counter(
                "stream_app_transport_checkpoint_failures",
                "Checkpoints that failed, by stage (deliver: rewound and restored; commit: retried later; "
                "fenced: partitions dropped until the next rebalance).", ["pipeline", "stage"], registry=reg),
            changelog_records=Counter(
                "stream_app_transport_changelog_records", "State changes written to a changelog topic.",
                ["store"], registry=reg),
            restored_records=Counter(
                "stream_app_transport_restored_records",
                "Entries restored into a store, by source (snapshot file or changelog).", ["store", "source"],
                registry=reg),
            restore_seconds=Histogram(
                "stream_app_transport_restore_seconds", "Wall time to restore the stores of newly assigned "
                "partitions.", ["pipeline"], buckets=DURATION_BUCKETS, registry=reg),
        )
