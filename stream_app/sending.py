"""Outputs handed straight to the app's Kafka producer, as one record batch per partition.

Faust's ``Topic.send``/``send_soon`` wrap every record in futures, a buffer and sensor calls, and
aiokafka's ``send`` partitions and queues one record at a time: on the hot path that costs more
than the rest of the output work. Here the records of one call are appended to one aiokafka
``BatchBuilder`` per partition (partitioned like the default partitioner: murmur2 of the key) and
queued with ``send_batch``. They go into the same producer that Faust flushes before it commits
input offsets, so delivery stays at-least-once. A batch that still fails after the producer's
retries is logged (as Faust does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from functools import partial
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from stream_app.pipelines.base import Record, partition_of

__all__ = ["send_records", "partition_of", "partition_count", "kafka_producer"]

log = logging.getLogger(__name__)


async def kafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The aiokafka producer under ``app``'s Faust producer (started when it was not yet)."""
    # Faust's aiokafka transport keeps its client in ``_producer`` (faust-streaming is pinned).
    return (await app.maybe_start_producer())._producer


async def send_records(producer: AIOKafkaProducer, topic: str, records: Iterable[Record]) -> int:
    """Queue keyed (key, value) records for ``topic`` without waiting for the broker; returns how many."""
    records = list(records)
    if not records:
        return 0
    partitions = sorted(await producer.partitions_for(topic))
    batches: dict[int, BatchBuilder] = {}
    sent = 0
    for key, value in records:
        partition = partitions[partition_of(key, len(partitions))]
        batch = batches.get(partition)
        if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
            if batch is not None:  # full: queue it and start another
                await _queue(producer, batch, topic, partition)
            batch = batches[partition] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
        sent += 1
    for partition, batch in batches.items():
        await _queue(producer, batch, topic, partition)
    return sent


async def partition_count(producer: AIOKafkaProducer, topic: str) -> int:
    """How many partitions ``topic`` has (from the producer's metadata)."""
    return len(await producer.partitions_for(topic))


async def _queue(producer: AIOKafkaProducer, batch: BatchBuilder, topic: str, partition: int) -> None:
    delivery = await producer.send_batch(batch, topic, partition=partition)
    delivery.add_done_callback(partial(_report_failure, topic))


def _report_failure(topic: str, delivery: asyncio.Future[Any]) -> None:
    if not delivery.cancelled() and delivery.exception() is not None:
        log.error("could not send a record batch to %s: %s", topic, delivery.exception())
