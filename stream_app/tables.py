"""Helpers for the changelogged tables the agents write from inside ``take_events``."""

from __future__ import annotations

from faust.types import CollectionT

from stream_app.app import app

__all__ = ["ready_for_writes"]


async def ready_for_writes(*tables: CollectionT) -> None:
    """Load the producer's metadata of the tables' changelog topics.

    A ``use_partitioner`` table computes each write's changelog partition from that metadata and
    fails when it is not known yet, which it is not on a fresh worker before the first write.
    """
    producer = app.producer._ensure_producer()  # Faust exposes no public handle on it
    for table in tables:
        await producer.partitions_for(table.changelog_topic.get_topic_name())
