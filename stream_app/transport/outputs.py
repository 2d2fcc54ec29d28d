"""Outputs as one aiokafka record batch per (topic, partition), with their delivery futures.

aiokafka's ``send`` partitions, serializes and queues one record at a time and returns a future per
record. Here a call's records are appended to one ``BatchBuilder`` per partition (a new one only
when a batch is full) and queued with ``send_batch``: one future per batch, kept until the
checkpoint awaits them all. Partitions are chosen like Kafka's default partitioner (murmur2 of the
key); null keys take the partitions in turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream_app.transport.exceptions import TransportError
from stream_app.transport.partitioning import partition_of

__all__ = ["OutputWriter", "Delivery"]

Headers = Sequence[tuple[str, bytes]]


class Delivery:
    """A queued record batch: its future, and how many records it holds (for changelog ends)."""

    __slots__ = ("future", "topic", "partition", "count")

    def __init__(self, future: asyncio.Future[Any], topic: str, partition: int, count: int) -> None:
        self.future, self.topic, self.partition, self.count = future, topic, partition, count


class OutputWriter:
    """Builds and queues record batches; ``pending`` holds the deliveries the next checkpoint awaits."""

    def __init__(self) -> None:
        self.pending: list[Delivery] = []
        self._partitions: dict[str, int] = {}
        self._next_null_partition = 0

    async def partition_count(self, producer: AIOKafkaProducer, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            try:
                count = len(await producer.partitions_for(topic))
            except KafkaError as exc:
                raise TransportError(f"cannot find topic {topic!r} ({exc!r}): create it (with the app's "
                                     f"partition count) before the worker starts") from exc
            self._partitions[topic] = count
        return count

    async def write(self, producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
                    partition: int | None = None) -> list[Delivery]:
        """Queue ``(key, value)`` records for ``topic`` (into ``partition`` if given, else by key)."""
        n = await self.partition_count(producer, topic)
        builders: dict[int, tuple[Any, int]] = {}
        queued: list[Delivery] = []
        for key, value in records:
            target = partition if partition is not None else self._partition(key, n)
            entry = builders.get(target)
            if entry is None:
                entry = builders[target] = (producer.create_batch(), 0)
            builder, count = entry
            if builder.append(key=key, value=value, timestamp=None) is None:
                queued.append(await self._queue(producer, builder, topic, target, count))
                builder, count = producer.create_batch(), 0
                if builder.append(key=key, value=value, timestamp=None) is None:
                    raise TransportError(f"a record for {topic!r} is larger than the producer's batch limit")
            builders[target] = (builder, count + 1)
        for target, (builder, count) in builders.items():
            queued.append(await self._queue(producer, builder, topic, target, count))
        return queued

    async def write_with_headers(self, producer: AIOKafkaProducer, topic: str,
                                 records: Iterable[tuple[bytes | None, bytes, Headers]]) -> list[Delivery]:
        """Queue ``(key, value, headers)`` records (dead letters: rare, so no batching finesse)."""
        n = await self.partition_count(producer, topic)
        queued = []
        for key, value, headers in records:
            target = self._partition(key, n)
            builder = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
                raise TransportError(f"a dead letter for {topic!r} is larger than the producer's batch limit")
            queued.append(await self._queue(producer, builder, topic, target, 1))
        return queued

    async def acknowledged(self) -> None:
        """Wait for every pending delivery; raise the first failure (all are awaited either way)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        results = await asyncio.gather(*(d.future for d in pending), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def forget(self) -> None:
        """Drop pending deliveries (after an abort: their outcome no longer matters)."""
        for delivery in self.pending:
            delivery.future.add_done_callback(_consume_exception)
        self.pending = []

    def _partition(self, key: bytes | None, n: int) -> int:
        if key is not None:
            return partition_of(key, n)
        self._next_null_partition = (self._next_null_partition + 1) % n
        return self._next_null_partition

    async def _queue(self, producer: AIOKafkaProducer, builder: Any, topic: str, partition: int,
                     count: int) -> Delivery:
        future = await producer.send_batch(builder, topic, partition=partition)
        delivery = Delivery(future, topic, partition, count)
        self.pending.append(delivery)
        return delivery


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # mark retrieved: an aborted batch's error is expected, not "never retrieved"
