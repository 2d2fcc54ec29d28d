"""The producers a transport writes with: one idempotent producer (``at_least_once``), or one
transactional producer per input partition (``exactly_once``).

Per partition, ``transactional.id`` = group-topic-partition: when a partition moves, its new owner's
InitProducerId fences the old owner and ends its open transaction, as Kafka Streams' first
``exactly_once`` mode did. (KIP-447 would let one producer per worker do this with the group
generation, but aiokafka's TxnOffsetCommit request does not carry the generation.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced

from stream_app.transport.config import TransportConfig
from stream_app.transport.outputs import OutputWriter

__all__ = ["new_producer", "PartitionProducers", "fenced", "close_quietly"]

log = logging.getLogger(__name__)


def new_producer(config: TransportConfig, transactional_id: str | None = None) -> AIOKafkaProducer:
    """An idempotent producer (acks=all), transactional when ``transactional_id`` is given."""
    return AIOKafkaProducer(acks="all", enable_idempotence=True, transactional_id=transactional_id,
                            transaction_timeout_ms=config.transaction_timeout_ms, linger_ms=config.producer_linger_ms,
                            max_batch_size=config.producer_max_batch_bytes, **config.client_options)


class PartitionProducers:
    """``exactly_once``: a transactional producer and an output writer per owned input partition,
    and which partitions have a transaction open."""

    def __init__(self, config: TransportConfig) -> None:
        self.config = config
        self.producers: dict[int, AIOKafkaProducer] = {}
        self.writers: dict[int, OutputWriter] = {}
        self.in_transaction: set[int] = set()

    def transactional_id(self, partition: int) -> str:
        return f"{self.config.group}-{self.config.input_topic}-{partition}"

    async def ensure(self, partition: int) -> None:
        """Start the partition's producer: its InitProducerId fences any earlier owner and ends its open
        transaction, so call it before reading the partition's committed offsets."""
        if partition in self.producers:
            return
        producer = new_producer(self.config, self.transactional_id(partition))
        try:
            await producer.start()
        except BaseException:
            await close_quietly(producer.stop())
            raise
        self.producers[partition] = producer
        self.writers[partition] = OutputWriter()

    async def keep_only(self, partitions: list[int]) -> None:
        """Close the producers of partitions no longer owned; start those of the new ones."""
        for partition in set(self.producers) - set(partitions):
            await self.drop(partition)
        for partition in partitions:
            await self.ensure(partition)

    async def begin(self, partition: int) -> AIOKafkaProducer:
        """The partition's producer, inside a transaction (begun now if none is open)."""
        producer = self.producers[partition]
        if partition not in self.in_transaction:
            await producer.begin_transaction()
            self.in_transaction.add(partition)
        return producer

    def committed(self, partition: int) -> None:
        self.in_transaction.discard(partition)

    async def abort(self, partition: int) -> None:
        """End the partition's transaction without effect; a producer that cannot abort is replaced
        (its successor's InitProducerId aborts the transaction instead)."""
        producer = self.producers.get(partition)
        if partition in self.writers:
            self.writers[partition].forget()
        if producer is not None and partition in self.in_transaction:
            try:
                await producer.abort_transaction()
            except Exception as exc:
                log.warning("abort of partition %d failed (%r): replacing its producer", partition, exc)
                await self.drop(partition)
                await self.ensure(partition)
        self.in_transaction.discard(partition)

    async def drop(self, partition: int) -> None:
        producer = self.producers.pop(partition, None)
        self.writers.pop(partition, None)
        self.in_transaction.discard(partition)
        if producer is not None:
            await close_quietly(producer.stop())

    def fenced(self, partition: int) -> bool:
        return fenced(self.producers.get(partition))

    async def close(self) -> None:
        for partition in list(self.producers):
            await self.drop(partition)


def fenced(producer: AIOKafkaProducer | None) -> bool:
    """Whether a producer died of ProducerFenced. aiokafka surfaces the fence on the first waiter only
    and then fails later calls with assertion errors, so the sender task's own exception is read."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return (task is not None and task.done() and not task.cancelled()
            and isinstance(task.exception(), ProducerFenced))


async def close_quietly(closing: Any, timeout_s: float = 10.0) -> None:
    """Await a client's stop; errors and hangs (a broker gone) are logged at debug and ignored."""
    try:
        await asyncio.wait_for(closing, timeout_s)
    except (TimeoutError, Exception) as exc:  # closing after a failure: nothing left to save
        log.debug("error while closing a client: %r", exc)
