"""Kafka connection options (the worker's credentials included) and plain aiokafka producer/consumer
helpers for the CLI (generate, replay, tail) and the tests."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream_app.settings import Settings

__all__ = ["broker_credentials", "bootstrap_servers", "client_options", "ensure_topics", "partition_counts", "produce",
           "consume", "Record"]

Record = tuple[str, bytes | None, bytes]  # (topic, key, value)


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for SASL and/or TLS, or None for plaintext."""
    protocol = settings.security_protocol.upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_cafile)
        if settings.ssl_certfile:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    if protocol.startswith("SASL"):
        mechanism = settings.sasl_mechanism.upper()
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                     mechanism=mechanism, ssl_context=context)
    return faust.SSLCredentials(context) if context is not None else None


def bootstrap_servers(url: str) -> str:
    """``kafka://a:9092;b:9092`` -> ``a:9092,b:9092`` (what aiokafka expects)."""
    hosts = url.replace("kafka://", "").replace(";", ",")
    return ",".join(h.strip().rstrip("/") for h in hosts.split(",") if h.strip())


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by every client, security settings included."""
    options: dict[str, Any] = {"bootstrap_servers": bootstrap_servers(settings.broker or "")}
    credentials = broker_credentials(settings)
    if credentials is None:
        return options
    options["security_protocol"] = settings.security_protocol.upper()
    context = getattr(credentials, "context", None) or getattr(credentials, "ssl_context", None)
    if context is not None:
        options["ssl_context"] = context
    if settings.security_protocol.upper().startswith("SASL"):
        options.update(sasl_mechanism=settings.sasl_mechanism.upper(),
                       sasl_plain_username=settings.sasl_username, sasl_plain_password=settings.sasl_password)
    return options


async def ensure_topics(settings: Settings, names: Iterable[str]) -> None:
    """Create missing topics with the app's partitions, so a producer that runs before any worker
    does not leave the broker to auto-create them with its own default partition count."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        missing = set(names) - set(await admin.list_topics())
        if missing:
            new = [NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication)
                   for name in sorted(missing)]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another client created it meanwhile
    finally:
        await admin.close()


async def produce(settings: Settings, records: Iterable[Record], *, rate: float = 0.0,
                  on_sent: Any = None) -> int:
    """Send records (optionally paced to ``rate`` records/s); returns how many were sent."""
    producer = AIOKafkaProducer(linger_ms=5, **client_options(settings))
    await producer.start()
    sent, started, created = 0, time.monotonic(), set()
    try:
        for topic, key, value in records:
            if topic not in created:
                await ensure_topics(settings, [topic])
                created.add(topic)
            await producer.send(topic, value=value, key=key)
            sent += 1
            if on_sent is not None:
                on_sent(sent)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def consume(settings: Settings, topics: Iterable[str], *, from_beginning: bool = True,
                  idle_timeout_s: float | None = None) -> AsyncIterator[Any]:
    """Yield records of ``topics`` (no consumer group); stop after ``idle_timeout_s`` without one."""
    # A short metadata age: topics that a worker creates after we subscribed are picked up quickly.
    consumer = AIOKafkaConsumer(*topics, auto_offset_reset="earliest" if from_beginning else "latest",
                                enable_auto_commit=False, metadata_max_age_ms=2000, **client_options(settings))
    await consumer.start()
    idle_since = time.monotonic()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            if batch:
                idle_since = time.monotonic()
                for records in batch.values():
                    for record in records:
                        yield record
            elif idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                return
    finally:
        await consumer.stop()


async def partition_counts(settings: Settings, names: Iterable[str]) -> dict[str, int]:
    """Partition counts of the named topics that exist (absent ones are left out)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics(list(names))
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if d.get("error_code", 0) == 0 and d.get("partitions")}
