"""Every topic the app reads or writes; values travel as raw bytes and are (de)coded by schemas/."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import faust
from faust.types import TopicT

from stream_app.settings import Settings

__all__ = ["Topics", "TOPIC_NAMES", "declare_topics"]


@dataclass(frozen=True)
class Topics:
    """The app's topics (names carry ``settings.topic_prefix``)."""

    user_events: TopicT
    traffic_readings: TopicT
    predictions: TopicT
    forecasts: TopicT
    cell_activity: TopicT
    anomaly_alerts: TopicT
    dead_letters: TopicT
    sensor_aggregates: TopicT
    cell_events: TopicT

    @property
    def all(self) -> tuple[TopicT, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


# Topic names without the prefix, in the order of the fields above.
TOPIC_NAMES = ("user-events", "traffic-readings", "next-action-predictions", "traffic-forecasts", "cell-activity",
               "anomaly-alerts", "dead-letters", "sensor-aggregates", "cell-events")


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    """The app's topics, declared on ``app`` (nothing is created on the broker here)."""

    def raw(name: str) -> TopicT:
        # internal=True: the worker creates the topic at start (with the configured partitions) when
        # it does not exist yet, so assignment never skips an input that a producer has not created.
        return app.topic(settings.topic(name), key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=app.conf.topic_partitions, internal=True)

    return Topics(*(raw(name) for name in TOPIC_NAMES))
