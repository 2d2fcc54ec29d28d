"""Outputs handed straight to the app's Kafka producer.

Faust's ``Topic.send``/``send_soon`` wrap every record in futures, a buffer and sensor calls: on
the hot path that costs more than the producer itself. Records given to ``app.producer.send``
go into the same producer, which Faust flushes before it commits input offsets, so delivery stays
at-least-once. A record that still fails after the producer's retries is logged (as Faust does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from functools import partial

from faust.types import TopicT

from stream_app.app import app

__all__ = ["send_records"]

log = logging.getLogger(__name__)


async def send_records(topic: TopicT, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Queue (key, value) records for ``topic`` without waiting for the broker; returns how many."""
    producer, name = await app.maybe_start_producer(), topic.get_topic_name()
    on_done = partial(_report_failure, name)
    sent = 0
    for key, value in records:
        delivery = await producer.send(name, key, value, partition=None, timestamp=None, headers=None)
        delivery.add_done_callback(on_done)
        sent += 1
    return sent


def _report_failure(topic: str, delivery: asyncio.Future) -> None:
    if not delivery.cancelled() and delivery.exception() is not None:
        log.error("could not send a record to %s: %s", topic, delivery.exception())
