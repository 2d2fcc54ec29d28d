"""What every stage on the batch-native transport takes from the settings, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream_app import kafka_io
from stream_app.settings import Settings
from stream_app.transport import TransportConfig

__all__ = ["transport_config"]


def transport_config(settings: Settings, advertised_url: str, *, name: str, input_topic: str, store: str,
                     fetch_timeout_s: float, **overrides: Any) -> TransportConfig:
    """The ``TransportConfig`` of stage ``name`` reading ``input_topic`` into ``store``: the app's
    client, group, batch, producer and changelog settings; ``overrides`` for what one stage sets
    apart (its group id, its punctuator's interval)."""
    if settings.producer_max_batch is not None:
        overrides.setdefault("producer_max_batch_bytes", settings.producer_max_batch)
    return TransportConfig(
        name=name, app_id=settings.app_id, input_topic=settings.topic(input_topic),
        dead_letter_topic=settings.topic("dead-letters"), state_dir=Path(settings.state_dir),
        client_options=kafka_io.client_options(settings), advertised_url=advertised_url, stores=(store,),
        guarantee=settings.processing_guarantee, max_records=max(settings.batch_max, 1),
        fetch_timeout_ms=int(fetch_timeout_s * 1000),
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_s * 1000),
        rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
        producer_linger_ms=settings.producer_linger_ms, changelog_replication=settings.replication, **overrides)
