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
from functools import lru_cache, partial

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from faust.types import TopicT

from stream_app.app import app

__all__ = ["send_records", "partition_of", "partition_count"]

log = logging.getLogger(__name__)


@lru_cache(maxsize=200_000)
def partition_of(key: bytes, n_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (murmur2, as the Java client)."""
    return (murmur2(key) & 0x7FFFFFFF) % n_partitions


async def send_records(topic: TopicT, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Queue keyed (key, value) records for ``topic`` without waiting for the broker; returns how many."""
    records = list(records)
    if not records:
        return 0
    producer = await _aiokafka_producer()
    name = topic.get_topic_name()
    partitions = sorted(await producer.partitions_for(name))
    batches: dict[int, object] = {}
    sent = 0
    for key, value in records:
        partition = partitions[partition_of(key, len(partitions))]
        batch = batches.get(partition)
        if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
            if batch is not None:  # full: queue it and start another
                await _queue(producer, batch, name, partition)
            batch = batches[partition] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
        sent += 1
    for partition, batch in batches.items():
        await _queue(producer, batch, name, partition)
    return sent


async def partition_count(topic: TopicT) -> int:
    """How many partitions ``topic`` has (from the producer's metadata)."""
    return len(await (await _aiokafka_producer()).partitions_for(topic.get_topic_name()))


async def _aiokafka_producer() -> AIOKafkaProducer:
    # Faust's aiokafka transport keeps its client in ``_producer`` (faust-streaming is pinned).
    return (await app.maybe_start_producer())._producer


async def _queue(producer: AIOKafkaProducer, batch, topic: str, partition: int) -> None:
    delivery = await producer.send_batch(batch, topic, partition=partition)
    delivery.add_done_callback(partial(_report_failure, topic))


def _report_failure(topic: str, delivery: asyncio.Future) -> None:
    if not delivery.cancelled() and delivery.exception() is not None:
        log.error("could not send a record batch to %s: %s", topic, delivery.exception())
