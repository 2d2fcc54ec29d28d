"""The app's changelogged tables, and what an agent awaits before its first write to them."""

from __future__ import annotations

from dataclasses import dataclass

import faust
from faust.types import CollectionT

from stream_app.settings import Settings
from stream_app.topics import Topics

__all__ = ["Tables", "declare_tables", "ready_for_writes"]


@dataclass(frozen=True)
class Tables:
    """Per-key state of each pipeline as bytes, rebuilt from its changelog topic on start
    (``user_state`` is None on the transport hot path, whose stores hold the users; ``network_state``
    on a worker that does not run the traffic stage, so that Faust assigns its partitions with the
    ``sensor-aggregates`` partitions, to the workers that run stage 2)."""

    user_state: CollectionT | None
    cell_windows: CollectionT
    sensor_windows: CollectionT
    network_state: CollectionT | None


def declare_tables(app: faust.App, settings: Settings) -> Tables:
    """The app's tables, declared on ``app``.

    ``use_partitioner``: a write made while handling a batch has no single "current" event (Faust
    #497), so the changelog partition is computed from the key, which is the input topic's key.
    """

    def table(name: str) -> CollectionT:
        return app.Table(name, default=None, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                         use_partitioner=True)

    user_state = table("user-state") if settings.hot_path == "faust" else None
    network_state = table("network-state") if "traffic" in settings.stages else None
    return Tables(user_state=user_state, cell_windows=table("cell-windows"),
                  sensor_windows=table("sensor-windows"), network_state=network_state)


async def ready_for_writes(app: faust.App, topics: Topics, *tables: CollectionT | None) -> None:
    """Create the app's topics that do not exist yet, and load the tables' changelog metadata.

    Output topics are created here rather than by the broker (auto-creation would pick the broker's
    partition count). A ``use_partitioner`` table computes each write's changelog partition from
    the producer's metadata and fails when it is not known yet, as on a fresh worker.
    """
    for topic in topics.all:
        await topic.maybe_declare()
    # Faust exposes no public handle on it, and ProducerT does not declare this method of its Producer
    producer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    names = [t.get_topic_name() for t in topics.all] + [t.changelog_topic.get_topic_name() for t in tables
                                                         if t is not None]
    for name in names:  # send_soon() and table writes pick partitions from this metadata
        await producer.partitions_for(name)
