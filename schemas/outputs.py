"""Output records: the JSON every downstream consumer reads; these shapes are the public interface."""

from __future__ import annotations

from typing import Literal

from msgspec.structs import force_setattr

from schemas.base import Count, EpochMillis, Probability, Record
from schemas.events import ReadingKind
from schemas.exceptions import FieldError

__all__ = [
    "ActionScore", "NextActionPrediction", "HorizonForecast", "TrafficForecast", "SensorAggregate",
    "CellActivity", "AnomalyKind", "IncidentStatus", "Severity", "AnomalyAlert", "DeadLetter", "MAX_PAYLOAD_CHARS",
]

AnomalyKind = Literal["forecast_residual", "profile_drop", "behavior", "crowd", "incident"]
IncidentStatus = Literal["raised", "resolved"]
Severity = Literal["warning", "critical"]

#: Dead letters carry at most this many characters of the rejected payload.
MAX_PAYLOAD_CHARS = 4096


class ActionScore(Record, frozen=True, gc=False):
    """One candidate next action and the model's probability for it (0..1).

    Positional arguments are allowed (``ActionScore(action, prob)``): the behavior stage builds ten
    per event, and keywords cost a third of that. Not tracked by the garbage collector (``gc=False``:
    a string and a float hold no references back), so those ten do not bring collections closer.
    """

    action: str
    prob: Probability


class NextActionPrediction(Record, frozen=True, kw_only=True, gc=False):
    """The most likely next actions of a user, emitted once per consumed event.

    Trigger: ``event_id`` and ``user_id`` of the event that caused the prediction; ``as_of`` is its
    event time (epoch ms).
    Prediction: ``top_k`` in descending probability, made by ``model_version``.
    Context: ``window_events`` events of this user spanning ``window_span_s`` seconds fed the model.
    Timing (epoch ms): ``event_ts`` event time, ``ingested_at`` Kafka record timestamp of the event,
    ``processed_at`` wall clock at emit. ``late`` marks an event that arrived out of event-time order.

    Not tracked by the garbage collector (``gc=False``, one per event): its fields are strings,
    numbers and a list of ``ActionScore``, none of which can refer back to it.
    """

    event_id: str
    user_id: str
    as_of: EpochMillis
    top_k: list[ActionScore]
    model_version: str
    window_events: Count
    window_span_s: float
    event_ts: EpochMillis
    ingested_at: EpochMillis
    processed_at: EpochMillis
    late: bool = False


class HorizonForecast(Record, frozen=True, kw_only=True):
    """The forecast ``value`` ``minutes`` after the window end, in the readings' kind and unit.

    ``speed`` repeats the value for speed forecasts (the original field; null for other kinds).
    ``source`` says what made it: ``model``, or the baseline served at this horizon because it
    beat the model on validation (``persistence``, ``hour-of-day``, ``hour-of-week``,
    ``window-mean``); null when the producer does not say.
    """

    minutes: Count
    speed: float | None = None
    value: float | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.value is None:
            if self.speed is None:
                raise FieldError("value", "invalid_field", "missing; a horizon needs value (or speed)")
            force_setattr(self, "value", self.speed)


class TrafficForecast(Record, frozen=True, kw_only=True):
    """Forecasts of one sensor, emitted once per closed aggregation window.

    Sensor: ``sensor_id`` within ``network``.
    Window: ``window_end`` (epoch ms) of the window that triggered the step; ``observed`` is its
    aggregate value, or null with ``imputed`` true when the sensor sent nothing and a value was filled in.
    Forecast: ``horizons`` in ascending minutes, made by ``model_version``; ``processed_at`` is the
    wall clock at emit (epoch ms). What is forecast: ``kind`` (speed by default) in ``unit``.
    """

    sensor_id: str
    network: str
    window_end: EpochMillis
    observed: float | None
    imputed: bool
    horizons: list[HorizonForecast]
    model_version: str
    processed_at: EpochMillis
    kind: ReadingKind = "speed"
    unit: str | None = None


class SensorAggregate(Record, frozen=True, kw_only=True):
    """Readings of one sensor in one tumbling window (internal topic between the traffic stages).

    Sensor: ``sensor_id`` within ``network``.
    Window: [``window_start``, ``window_end``) in epoch ms.
    Aggregates: ``mean_speed``, ``min_speed``, ``max_speed`` over ``count`` readings; ``flow_sum``
    is null when no reading carried a flow.
    """

    sensor_id: str
    network: str
    window_start: EpochMillis
    window_end: EpochMillis
    mean_speed: float
    min_speed: float
    max_speed: float
    count: Count
    flow_sum: float | None = None


class CellActivity(Record, frozen=True, kw_only=True):
    """User activity in one H3 cell over one tumbling window.

    Cell: ``cell`` is the H3 index at ``resolution``.
    Window: [``window_start``, ``window_end``) in epoch ms.
    Activity: ``events`` events from ``users`` distinct users; ``actions`` counts events per action.
    """

    cell: str
    resolution: Count
    window_start: EpochMillis
    window_end: EpochMillis
    events: Count
    users: Count
    actions: dict[str, Count] = {}


class AnomalyAlert(Record, frozen=True, kw_only=True):
    """An observation that strays from what was expected.

    What: ``kind`` names the detector; ``key`` is the sensor, user or H3 cell id, ``network`` the sensor's
    network (null for users); ``alert_id`` is unique per alert.
    When: ``ts`` is the event time of the observation (epoch ms).
    How far: ``observed`` against ``expected``, ``score`` from the detector (higher is stranger),
    ``severity`` warning or critical; ``detail`` is free text for people.
    Incidents (``kind`` incident): one record when ``status`` is raised (the first sensor to depart)
    and one when resolved (every member is back); ``incident_id`` ties them, ``sensors`` lists the
    neighbouring sensors grouped into it.
    """

    alert_id: str
    kind: AnomalyKind
    key: str
    network: str | None = None
    ts: EpochMillis
    observed: float
    expected: float
    score: float
    severity: Severity
    detail: str = ""
    incident_id: str | None = None
    status: IncidentStatus | None = None
    sensors: list[str] = []


class DeadLetter(Record, frozen=True, kw_only=True):
    """A Kafka record that could not be processed, kept for inspection and replay.

    Origin: ``source_topic``, ``partition``, ``offset``; ``key`` is the record key decoded as
    UTF-8 with replacement characters (null when the record had none).
    Why: ``reason`` is a short fixed code (a metrics label), ``detail`` names the field and the rule.
    Payload: ``payload`` is the value decoded as UTF-8 with replacement characters, cut to 4096
    characters (``truncated`` says so); ``payload_size`` is the size of the original in bytes.
    When: ``received_at`` is the wall clock when the record was rejected (epoch ms).
    """

    source_topic: str
    partition: int
    offset: int
    key: str | None = None
    reason: str
    detail: str
    payload: str
    payload_size: Count
    truncated: bool
    received_at: EpochMillis

    @classmethod
    def from_record(cls, value: bytes | None, key: bytes | None, *, source_topic: str, partition: int,
                    offset: int, reason: str, detail: str, received_at: int) -> DeadLetter:
        """Build a dead letter from the raw key and value of a Kafka record."""
        raw = value or b""
        text = raw.decode("utf-8", errors="replace")
        return cls(
            source_topic=source_topic, partition=partition, offset=offset,
            key=None if key is None else key.decode("utf-8", errors="replace"),
            reason=reason, detail=detail, payload=text[:MAX_PAYLOAD_CHARS], payload_size=len(raw),
            truncated=len(text) > MAX_PAYLOAD_CHARS, received_at=received_at,
        )
