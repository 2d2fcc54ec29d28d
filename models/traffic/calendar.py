"""Local wall-clock time of UTC instants in an IANA time zone (DST included), vectorized."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from models.exceptions import ModelError

__all__ = ["check_timezone", "local_wall_ms", "DAY_MS", "WEEK_MS", "EPOCH_WEEKDAY"]

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
_QUARTER_HOUR_MS = 900_000  # offsets change on quarter-hour boundaries in every zone


def check_timezone(name: str | None) -> str | None:
    """``name`` if it is an IANA zone this system knows (None passes); ModelError with the fix."""
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ModelError(f"time zone {name!r} is unknown; give an IANA name such as Europe/Paris or "
                         "America/Los_Angeles (install tzdata if the system has no zone database)") from exc
    return name


def local_wall_ms(epoch_ms: np.ndarray | int, timezone: str | None) -> np.ndarray:
    """Local wall-clock ms (a local time read as if it were UTC) of UTC epoch ms in ``timezone``.

    None means the instants already are local wall-clock times and are returned as they are.
    """
    ms = np.asarray(epoch_ms, dtype=np.int64)
    if timezone is None:
        return ms
    zone = ZoneInfo(timezone)
    quarters, inverse = np.unique(ms // _QUARTER_HOUR_MS, return_inverse=True)
    offsets = np.array([_offset_ms(int(q) * _QUARTER_HOUR_MS, zone) for q in quarters.ravel()], dtype=np.int64)
    return ms + offsets[inverse].reshape(ms.shape)


def _offset_ms(epoch_ms: int, zone: ZoneInfo) -> int:
    offset = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).astimezone(zone).utcoffset()
    return int(offset.total_seconds() * 1000) if offset is not None else 0
