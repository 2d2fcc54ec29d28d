"""Input records: user behavior events and road-sensor readings, as producers send them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Literal, get_args

from msgspec import Meta
from msgspec.structs import force_setattr

from schemas.base import (
    Identifier,
    Latitude,
    Longitude,
    Probability,
    Record,
    TimestampIn,
    require_coordinate_pair,
    require_finite,
)
from schemas.exceptions import FieldError
from schemas.timestamps import to_epoch_ms

__all__ = ["PropertyValue", "UserEvent", "TrafficReading", "ReadingKind", "READING_KINDS", "MAX_PROPERTIES",
           "TRAFFIC_READING_RULES"]

MAX_PROPERTIES = 32

PropertyKey = Annotated[str, Meta(max_length=64)]
PropertyValue = (
    Annotated[str, Meta(max_length=256)]
    | bool
    | Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
    | float
)
Speed = Annotated[float, Meta(ge=0.0, le=300.0, description="Same unit as the training data (km/h or mph).")]
NonNegative = Annotated[float, Meta(ge=0.0)]
ReadingKind = Literal["speed", "flow", "count", "occupancy"]
READING_KINDS: tuple[str, ...] = get_args(ReadingKind)
Unit = Annotated[str, Meta(max_length=32, description="Free text, e.g. mph, km/h, veh/h, passengers/h, %.")]


class UserEvent(Record, frozen=True, kw_only=True):
    """One user action (view, click, purchase, ...), keyed by ``user_id``.

    Identity: ``event_id`` (unique per event), ``user_id``, optional ``session_id``.
    Time: ``ts`` is the event time; producers may send epoch ms or ISO-8601, the record holds epoch ms.
    What happened: ``action``, and optionally the ``item_id`` and its ``category``.
    Where: ``lat``/``lon`` in WGS84 degrees, both or neither.
    Extras: ``properties``, at most 32 flat key/value pairs.
    """

    event_id: Identifier
    user_id: Identifier
    ts: TimestampIn
    action: Identifier
    item_id: str | None = None
    category: str | None = None
    lat: Latitude | None = None
    lon: Longitude | None = None
    session_id: str | None = None
    properties: Annotated[dict[PropertyKey, PropertyValue], Meta(max_length=MAX_PROPERTIES)] = {}

    def __post_init__(self) -> None:
        # Runs for every decoded event: the usual one (epoch ms, both coordinates finite floats or
        # both absent, no properties) passes without the checks' calls; anything else goes through
        # them, in the same order, so a broken event is refused with the same reason and detail.
        ts, lat, lon = self.ts, self.lat, self.lon
        if type(ts) is not int:
            force_setattr(self, "ts", to_epoch_ms(ts))
        if not (lat is None and lon is None or type(lat) is float and type(lon) is float
                and math.isfinite(lat) and math.isfinite(lon)):
            require_finite(self, "lat", "lon")
            require_coordinate_pair(lat, lon)
        if self.properties:
            _require_finite_properties(self.properties)

    def __hash__(self) -> int:
        # The properties dict is unhashable; equal events always share these three fields.
        return hash((self.event_id, self.user_id, self.ts))


class TrafficReading(Record, frozen=True, kw_only=True):
    """One reading of a road or transit sensor, keyed by ``sensor_id``.

    Identity: ``sensor_id`` within its ``network``.
    Time: ``ts`` as for ``UserEvent``; the record holds epoch ms.
    Measurement: ``value`` of ``kind`` (speed, flow, count or occupancy) in ``unit``, or ``speed``
    alone (the original form, kind speed). Per kind: speed 0..300; flow non-negative; count a
    non-negative integer of any size; occupancy 0..1, or 0..100 when ``unit`` is ``%``. A speed
    reading always holds its value in both ``speed`` and ``value``; other kinds leave ``speed`` null.
    Extras: ``flow`` (vehicles per interval) and ``occupancy`` (0..1) measured beside a speed.
    Where: ``lat``/``lon`` in WGS84 degrees, both or neither.
    """

    sensor_id: Identifier
    network: Identifier = "default"
    ts: TimestampIn
    speed: Speed | None = None
    value: int | float | None = None
    kind: ReadingKind = "speed"
    unit: Unit | None = None
    flow: NonNegative | None = None
    occupancy: Probability | None = None
    lat: Latitude | None = None
    lon: Longitude | None = None

    def __post_init__(self) -> None:
        force_setattr(self, "ts", to_epoch_ms(self.ts))
        require_finite(self, "speed", "value", "flow", "occupancy", "lat", "lon")
        require_coordinate_pair(self.lat, self.lon)
        force_setattr(self, "value", _checked_value(self.kind, self.value, self.speed, self.unit))
        if self.kind == "speed":
            force_setattr(self, "speed", self.value)

    @property
    def measured(self) -> float:
        """The value as a float whatever the kind (inf for a count beyond the float range)."""
        try:
            return float(self.value or 0)
        except OverflowError:
            return math.inf


def _checked_value(kind: str, value: int | float | None, speed: float | None, unit: str | None) -> int | float:
    """The reading's value after the rules of its ``kind``; FieldError naming the broken rule."""
    if kind != "speed" and speed is not None:
        raise FieldError("speed", "invalid_field", f"given with kind {kind!r}; send the measurement in value")
    if value is None:
        if speed is None:
            raise FieldError("value", "invalid_field", "missing; send value (with kind and unit) or speed")
        return speed
    if speed is not None and speed != value:
        raise FieldError("value", "invalid_field", f"{value} differs from speed {speed}; send one of them")
    if value < 0:
        raise FieldError("value", "out_of_range", f"{kind} must be non-negative, got {value}")
    if kind == "count":
        return _whole_count(value)
    upper = _upper_bound(kind, unit)
    if upper is not None and value > upper:
        hint = "in %" if unit in _PERCENT_UNITS else _UNIT_HINTS[kind]
        raise FieldError("value", "out_of_range", f"{kind} must be <= {upper:g} ({hint}), got {value}")
    try:
        return float(value)
    except OverflowError:
        raise FieldError("value", "out_of_range", f"{kind} must be a finite number, got {value}") from None


def _upper_bound(kind: str, unit: str | None) -> float | None:
    """Largest valid value of ``kind`` in ``unit``; None where there is none."""
    if kind == "speed":
        return 300.0
    if kind == "occupancy":
        return 100.0 if unit in _PERCENT_UNITS else 1.0
    return None


def _whole_count(value: int | float) -> int:
    """A count as an int; FieldError for a fractional one."""
    if isinstance(value, float):
        if not value.is_integer():
            raise FieldError("value", "out_of_range", f"count must be a whole number, got {value}")
        return int(value)
    return value


_PERCENT_UNITS = frozenset({"%", "percent", "pct"})
_UNIT_HINTS = {"speed": "in any unit", "occupancy": "a fraction; send unit % for 0..100"}

#: JSON Schema rules msgspec cannot derive from the field types (merged by ``schemas.export``).
TRAFFIC_READING_RULES = {
    "anyOf": [{"required": ["speed"]}, {"required": ["value"]}],
    "allOf": [
        {"if": {"properties": {"kind": {"const": "count"}}, "required": ["kind"]},
         "then": {"properties": {"value": {"type": "integer", "minimum": 0}}}},
        {"if": {"properties": {"kind": {"enum": ["flow", "count", "occupancy"]}}, "required": ["kind"]},
         "then": {"properties": {"value": {"minimum": 0}}, "not": {"required": ["speed"]}},
         "else": {"properties": {"value": {"minimum": 0, "maximum": 300}}}},
        {"if": {"properties": {"kind": {"const": "occupancy"}}, "required": ["kind"]},
         "then": {"if": {"properties": {"unit": {"enum": sorted(_PERCENT_UNITS)}}, "required": ["unit"]},
                  "then": {"properties": {"value": {"maximum": 100}}},
                  "else": {"properties": {"value": {"maximum": 1}}}}},
    ],
}


def _require_finite_properties(properties: Mapping[str, object] | None) -> None:
    for key, value in (properties or {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(f"properties.{key}", "out_of_range", f"expected a finite number, got {value}")
