"""Input records: user behavior events and road-sensor readings, as producers send them."""

from __future__ import annotations

import math
from typing import Annotated

from msgspec import Meta
from msgspec.structs import force_setattr

from schemas.base import (
    Identifier, Latitude, Longitude, Probability, Record, TimestampIn,
    require_coordinate_pair, require_finite,
)
from schemas.exceptions import FieldError
from schemas.timestamps import to_epoch_ms

__all__ = ["PropertyValue", "UserEvent", "TrafficReading", "MAX_PROPERTIES"]

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


class UserEvent(Record, kw_only=True):
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
        force_setattr(self, "ts", to_epoch_ms(self.ts))
        require_finite(self, "lat", "lon")
        require_coordinate_pair(self.lat, self.lon)
        _require_finite_properties(self.properties)

    def __hash__(self) -> int:
        # The properties dict is unhashable; equal events always share these three fields.
        return hash((self.event_id, self.user_id, self.ts))


class TrafficReading(Record, kw_only=True):
    """One reading of a road sensor, keyed by ``sensor_id``.

    Identity: ``sensor_id`` within its road ``network``.
    Time: ``ts`` as for ``UserEvent``; the record holds epoch ms.
    Measurements: ``speed`` (same unit as the training data), optional ``flow`` (vehicles per
    interval) and ``occupancy`` (fraction of time the detector was covered, 0..1).
    Where: ``lat``/``lon`` in WGS84 degrees, both or neither.
    """

    sensor_id: Identifier
    network: Identifier = "default"
    ts: TimestampIn
    speed: Speed
    flow: NonNegative | None = None
    occupancy: Probability | None = None
    lat: Latitude | None = None
    lon: Longitude | None = None

    def __post_init__(self) -> None:
        force_setattr(self, "ts", to_epoch_ms(self.ts))
        require_finite(self, "speed", "flow", "occupancy", "lat", "lon")
        require_coordinate_pair(self.lat, self.lon)


def _require_finite_properties(properties: dict[str, object] | None) -> None:
    for key, value in (properties or {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(f"properties.{key}", "out_of_range", f"expected a finite number, got {value}")
