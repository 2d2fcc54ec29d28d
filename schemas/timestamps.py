"""Event timestamps: ISO-8601 strings or epoch milliseconds, normalized to epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.exceptions import FieldError

__all__ = ["MIN_TIMESTAMP_MS", "MAX_FUTURE_MS", "to_epoch_ms", "check_time_window", "format_ms"]

#: 2000-01-01T00:00:00Z; anything older is a producer bug (seconds sent as ms, zero, ...).
MIN_TIMESTAMP_MS = 946_684_800_000
#: How far past the consumer's clock an event time may lie (producer clock skew).
MAX_FUTURE_MS = 86_400_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def to_epoch_ms(value: int | str, *, field: str = "ts") -> int:
    """Epoch milliseconds from an int (taken as ms) or an ISO-8601 string (naive means UTC)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise FieldError(field, "bad_timestamp", f"expected epoch ms or an ISO-8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise FieldError(field, "bad_timestamp", f"not an ISO-8601 time: {value[:64]!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // _ONE_MS


def check_time_window(ts: int, now_ms: int, *, field: str = "ts") -> None:
    """Raise ``FieldError`` unless ``ts`` lies in [2000-01-01, now + 1 day]."""
    if MIN_TIMESTAMP_MS <= ts <= now_ms + MAX_FUTURE_MS:
        return
    raise FieldError(field, "bad_timestamp",
                     f"expected a time in [2000-01-01T00:00:00Z, now + 1 day], got {ts} ({format_ms(ts)})")


def format_ms(ts: int) -> str:
    """ISO-8601 UTC text for epoch milliseconds, or ``"out of calendar"`` when it has none."""
    try:
        return (_EPOCH + ts * _ONE_MS).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except OverflowError:
        return "out of calendar"
