"""Base record class and the annotated field types shared by every schema."""

from __future__ import annotations

import math
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.exceptions import FieldError
from schemas.timestamps import MIN_TIMESTAMP_MS

__all__ = [
    "Record", "Identifier", "EpochMillis", "TimestampIn", "Latitude", "Longitude",
    "Probability", "Count", "require_finite", "require_coordinate_pair",
]


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Immutable record; fields left at their default are not written.

    Unknown fields in the input are ignored, so producers may add fields before consumers know them.
    Records without list or dict fields are hashable. Subclasses pass ``kw_only=True`` themselves:
    msgspec applies it to the fields of the class that says it, not to subclasses. They also repeat
    ``frozen=True``: msgspec inherits it, but type checkers only see it where it is written.
    """


Identifier = Annotated[str, Meta(min_length=1, max_length=128)]
EpochMillis = Annotated[int, Meta(ge=0, description="Unix epoch milliseconds (UTC).")]
TimestampIn = (
    Annotated[int, Meta(description="Unix epoch milliseconds (UTC), not before 2000-01-01.",
                        extra_json_schema={"minimum": MIN_TIMESTAMP_MS})]
    | Annotated[str, Meta(max_length=64, description="ISO-8601 time; without an offset it is taken as UTC.")]
)
Latitude = Annotated[float, Meta(ge=-90.0, le=90.0, description="WGS84 degrees.")]
Longitude = Annotated[float, Meta(ge=-180.0, le=180.0, description="WGS84 degrees.")]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Count = Annotated[int, Meta(ge=0)]


def require_finite(record: msgspec.Struct, *fields: str) -> None:
    """Raise ``FieldError`` for the first named float field that is NaN or infinite."""
    for name in fields:
        value = getattr(record, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(name, "out_of_range", f"expected a finite number, got {value}")


def require_coordinate_pair(lat: float | None, lon: float | None) -> None:
    """Raise ``FieldError`` unless ``lat`` and ``lon`` are both present or both absent."""
    if lat is None and lon is not None:
        raise FieldError("lat", "invalid_field", "missing while lon is given; send both or neither")
    if lon is None and lat is not None:
        raise FieldError("lon", "invalid_field", "missing while lat is given; send both or neither")
