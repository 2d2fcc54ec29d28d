"""What an agent awaits before its first write: output topics exist, changelog metadata is known."""

from __future__ import annotations

from faust.types import CollectionT

from stream_app.app import app
from stream_app.topics import ALL_TOPICS

__all__ = ["ready_for_writes"]


async def ready_for_writes(*tables: CollectionT) -> None:
    """Create the app's topics that do not exist yet, and load the tables' changelog metadata.

    Output topics are created here rather than by the broker (auto-creation would pick the broker's
    partition count). A ``use_partitioner`` table computes each write's changelog partition from
    the producer's metadata and fails when it is not known yet, as on a fresh worker.
    """
    for topic in ALL_TOPICS:
        await topic.maybe_declare()
    producer = app.producer._ensure_producer()  # Faust exposes no public handle on it
    names = [t.get_topic_name() for t in ALL_TOPICS] + [t.changelog_topic.get_topic_name() for t in tables]
    for name in names:  # send_soon() and table writes pick partitions from this metadata
        await producer.partitions_for(name)
