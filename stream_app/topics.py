"""Every topic the app reads or writes; values travel as raw bytes and are (de)coded by schemas/."""

from __future__ import annotations

from stream_app.app import app, settings

__all__ = ["user_events", "traffic_readings", "predictions", "forecasts", "cell_activity",
           "anomaly_alerts", "dead_letters", "sensor_aggregates", "cell_events", "ALL_TOPICS"]


def _raw(name: str):
    # internal=True: the worker creates the topic at start (with the configured partitions) when it
    # does not exist yet, so assignment never skips an input that a producer has not created.
    return app.topic(settings.topic(name), key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=app.conf.topic_partitions, internal=True)


user_events = _raw("user-events")
traffic_readings = _raw("traffic-readings")
predictions = _raw("next-action-predictions")
forecasts = _raw("traffic-forecasts")
cell_activity = _raw("cell-activity")
anomaly_alerts = _raw("anomaly-alerts")
dead_letters = _raw("dead-letters")
sensor_aggregates = _raw("sensor-aggregates")
cell_events = _raw("cell-events")

ALL_TOPICS = (user_events, traffic_readings, predictions, forecasts, cell_activity, anomaly_alerts,
              dead_letters, sensor_aggregates, cell_events)
